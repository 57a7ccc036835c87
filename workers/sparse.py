"""SPLADE-style sparse models: a masked-LM head turned into weights over the vocabulary.

Takes a plain transformers ``*ForMaskedLM`` folder or a sentence-transformers
SparseEncoder folder (``MLMTransformer``/``Transformer`` + ``SpladePooling``).
Each text's vector is ``pool_t log(1 + relu(logits[t]))`` over its real tokens
(max pooling by default, as SpladePooling computes it), returned as the
non-zero indices and their weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedstream.errors import ConfigError
from embedstream.registry import ModelSpec
from embedstream.workers.encoding import Encoder, modules_of, read_json, weights
from embedstream.workers.model import Tokens


class SpladeModel(Encoder):
    """One sparse vector over the vocabulary per text."""

    family = "sparse"
    output = "sparse"

    def __init__(self, spec: ModelSpec, threads: int) -> None:
        root = Path(weights(spec))
        modules = modules_of(root, spec.name, {"Transformer", "MLMTransformer", "SpladePooling"})
        pooling = {"pooling_strategy": "max", "activation_function": "relu"}
        for kind, folder in modules:
            if kind == "SpladePooling":
                pooling.update(read_json(folder / "config.json", spec.name))
        if pooling["pooling_strategy"] not in ("max", "sum"):
            raise ConfigError(f"model {spec.name}: SpladePooling strategy {pooling['pooling_strategy']!r}")
        if pooling["activation_function"] not in ("relu", "log1p_relu"):
            raise ConfigError(f"model {spec.name}: SpladePooling activation {pooling['activation_function']!r}")
        self.strategy = str(pooling["pooling_strategy"])
        self.twice = pooling["activation_function"] == "log1p_relu"
        super().__init__(spec, threads, str(modules[0][1]) if modules else weights(spec), "AutoModelForMaskedLM")
        self.dimensions = int(self.model.config.vocab_size)
        self.normalizes = False

    def forward(self, batch: list[Tokens], normalize: list[bool]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(indices ascending, weights) of each text's non-zero vocabulary entries."""
        torch = self._torch
        with torch.inference_mode():
            logits, mask = self.encode(batch, "logits")
            weights_ = torch.log1p(torch.relu(logits * mask.unsqueeze(-1).to(logits.dtype)))
            if self.twice:
                weights_ = torch.log1p(weights_)
            pooled = weights_.max(dim=1).values if self.strategy == "max" else weights_.sum(dim=1)
            if any(normalize):
                want = torch.tensor(normalize, device=pooled.device)[:, None]
                pooled = torch.where(want, torch.nn.functional.normalize(pooled, p=2, dim=1), pooled)
            dense = pooled.float().cpu().numpy()
        out = []
        for row in dense:
            idx = np.flatnonzero(row).astype(np.uint32)
            out.append((idx, row[idx].astype(np.float32)))
        return out
