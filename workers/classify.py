"""Sequence-classification models: labels with scores for each text.

Takes a transformers ``*ForSequenceClassification`` folder (``id2label`` in its
config) and returns each text's logits; the finish step turns them into scores
with the function transformers' text-classification pipeline would pick from
the config: sigmoid for ``problem_type`` multi_label_classification and for one
label, none for regression, softmax otherwise (a request may name another).
Loading is strict: a folder whose classifier weights are missing is refused.
"""

from __future__ import annotations

import numpy as np

from embedstream.errors import ConfigError
from embedstream.profile import Profile
from embedstream.registry import ModelSpec
from embedstream.workers.encoding import Encoder, weights
from embedstream.workers.model import Tokens


def default_function(problem_type: str | None, labels: int) -> str:
    """The function the text-classification pipeline applies when none is asked for."""
    if problem_type == "regression":
        return "none"
    if problem_type == "multi_label_classification" or labels == 1:
        return "sigmoid"
    return "softmax"


class SequenceClassifier(Encoder):
    """Logits over the model's labels per text."""

    family = "classify"
    output = "labels"

    def __init__(self, spec: ModelSpec, threads: int) -> None:
        super().__init__(spec, threads, weights(spec), "AutoModelForSequenceClassification")
        config = self.model.config
        id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
        if sorted(id2label) != list(range(int(config.num_labels))):
            raise ConfigError(f"model {spec.name}: id2label must name labels 0..{config.num_labels - 1}")
        #: The labels in id order.
        self.labels = tuple(id2label[i] for i in range(len(id2label)))
        self.function = default_function(getattr(config, "problem_type", None), len(self.labels))
        self.dimensions = len(self.labels)
        self.normalizes = False
        self.profile = Profile(
            family=self.family,
            loader="transformers",
            architecture=str(getattr(config, "model_type", "")),
            dimensions=self.dimensions,
            max_input_tokens=self.max_input_tokens,
            padding_side=self.padding_side,
            heads=(type(self.model).__name__,),
            labels=self.labels,
            function=self.function,
        )

    def forward(self, batch: list[Tokens], normalize: list[bool]) -> np.ndarray:
        """Logits (batch, labels)."""
        with self._torch.inference_mode():
            logits, _ = self.encode(batch, "logits")
            out: np.ndarray = logits.float().cpu().numpy()
            return out
