"""The text-dense family on the onnx engine: :class:`SentenceTransformerModel` with the encoder in ONNX Runtime.

Everything but the network is the torch model's own code (the folder, prompts,
tokenizer, padding); the forward pass runs the verified graph
(:mod:`embedstream.workers.onnxengine`) and pools and normalizes in numpy
exactly as sentence-transformers does in torch. No torch is imported.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from embedstream.registry import ModelSpec
from embedstream.workers import onnxengine
from embedstream.workers.model import Tokens
from embedstream.workers.text import SentenceTransformerModel


class OnnxSentenceModel(SentenceTransformerModel):
    """A sentence-transformers (or plain transformers) encoder folder served by ONNX Runtime."""

    engine = "onnx"

    def __init__(self, spec: ModelSpec, threads: int, cache: str = "") -> None:
        self._graph = onnxengine.graph(spec, cache)
        super().__init__(spec, threads)

    def _network(self, spec: ModelSpec, threads: int, folder: str, auto: str) -> None:
        self._torch = None
        self.device = SimpleNamespace(type="cpu")
        self.model = onnxengine.Network(self._graph, onnxengine.transformer_folder(spec), threads)

    def forward(self, batch: list[Tokens], normalize: list[bool]) -> np.ndarray:
        """Pad to the longest in the batch, run the graph, pool, normalize where asked."""
        ids, mask, types = self.padded(batch)
        hidden = self.model.hidden({"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
        vecs = pool(self.pooling, hidden, mask)
        want = np.asarray(normalize, dtype=bool)[:, None]
        if want.any():
            # torch.nn.functional.normalize: v / max(||v||, 1e-12)
            norms = np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
            vecs = np.where(want, vecs / norms, vecs)
        return np.ascontiguousarray(vecs, dtype=np.float32)


def pool(mode: str, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """sentence-transformers' Pooling (``mode``: one of onnxengine.POOLINGS) of a padded batch."""
    if mode == "cls":  # the first real token
        out: np.ndarray = hidden[np.arange(hidden.shape[0]), mask.argmax(axis=1)]
        return out
    m = mask[:, :, None].astype(hidden.dtype)
    if mode == "max":
        out = np.where(m > 0, hidden, -np.inf).max(axis=1).astype(hidden.dtype)
        return out
    out = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    return out
