"""Rerank models: a cross-encoder scores each (query, document) pair.

Takes a transformers ``*ForSequenceClassification`` folder with one label, plain
or saved by sentence-transformers' CrossEncoder, and returns what
``CrossEncoder.predict`` returns: the logit through the model's activation
(Sigmoid by default for one label, as CrossEncoder does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from embedstream.errors import ConfigError
from embedstream.registry import ModelSpec
from embedstream.workers.encoding import Encoder, read_json_optional, weights
from embedstream.workers.model import Tokens

_ACTIVATIONS = {"Sigmoid": "sigmoid", "Identity": "", "Tanh": "tanh"}


class CrossEncoderModel(Encoder):
    """A relevance score per (query, document) pair."""

    family = "rerank"
    output = "score"

    def __init__(self, spec: ModelSpec, threads: int) -> None:
        super().__init__(spec, threads, weights(spec), "AutoModelForSequenceClassification")
        if int(self.model.config.num_labels) != 1:
            raise ConfigError(f"model {spec.name}: a rerank model needs one label, not {self.model.config.num_labels}")
        root = Path(weights(spec))
        st = read_json_optional(root / "config_sentence_transformers.json") if root.is_dir() else {}
        legacy = getattr(self.model.config, "sentence_transformers", None) or {}
        name = str(st.get("activation_fn") or legacy.get("activation_fn") or "Sigmoid").rsplit(".", 1)[-1]
        if name not in _ACTIVATIONS:
            raise ConfigError(f"model {spec.name}: activation {name!r} is not supported")
        self.activation = _ACTIVATIONS[name]
        self.dimensions = 1
        self.normalizes = False

    def forward(self, batch: list[Tokens], normalize: list[bool]) -> np.ndarray:
        """Scores (batch, 1)."""
        torch = self._torch
        with torch.inference_mode():
            logits, _ = self.encode(batch, "logits")
            scores: Any = logits.float()
            if self.activation:
                scores = getattr(torch, self.activation)(scores)
            out: np.ndarray = scores.cpu().numpy().reshape(len(batch), 1)
            return out
