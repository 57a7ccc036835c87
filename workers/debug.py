"""The debug model: deterministic vectors from a hash of each text, and fault triggers for tests.

Test-only, never in the default registry. It gives vectors at zero compute cost
(the pipeline's own ceiling); with the registry's ``triggers = true``, inputs
carrying a trigger word make forward raise, kill the process, return NaN, or hang.
"""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np

from embedstream.registry import ModelSpec
from embedstream.workers.encoding import not_text
from embedstream.workers.model import Source, Tokens
from embedstream.workers.vocabulary import Vocabulary

#: Trigger words of the debug model (registry ``triggers = true``): an input
#: containing one makes forward raise, kill the process, return NaN, or hang.
#: They are fault-injection tools for tests and never active by default.
DEBUG_RAISE = "__embedstream_debug_raise__"
DEBUG_EXIT = "__embedstream_debug_exit__"
DEBUG_NAN = "__embedstream_debug_nan__"
DEBUG_HANG = "__embedstream_debug_hang__"
#: Exit status of a worker killed by :data:`DEBUG_EXIT`.
DEBUG_EXIT_STATUS = 86


class DebugModel:
    """Deterministic vectors from a hash of each text; no compute, optional latency.

    Test-only. With ``triggers`` on, inputs carrying a trigger word inject faults.
    """

    family = "debug"
    output = "dense"
    #: No tokenizer: no Tokenize, Decode or token-id inputs.
    vocabulary: Vocabulary | None = None

    def __init__(self, spec: ModelSpec) -> None:
        self.name = spec.name
        self.dimensions = spec.dimensions
        self.max_input_tokens = spec.max_input_tokens
        self.normalizes = True
        self.latency_s = spec.latency_ms / 1000.0
        self.triggers = spec.triggers

    def tokenize(self, sources: list[Source], side: str = "right") -> list[Tokens]:
        """Count whitespace words (+2 special tokens) as the token length."""
        out = []
        for text in sources:
            if not isinstance(text, str):
                out.append(not_text(self.name))
                continue
            n = len(text.split()) + 2
            out.append(Tokens(None, min(n, self.max_input_tokens), n > self.max_input_tokens, text))
        return out

    def forward(self, batch: list[Tokens], normalize: list[bool]) -> np.ndarray:
        """Hash each text into a vector; sleep ``latency_ms`` once per batch."""
        if self.latency_s:
            time.sleep(self.latency_s)
        texts = [t.text for t in batch]
        vecs = debug_vectors(texts, self.dimensions, normalize)
        if self.triggers:
            self._inject(texts, vecs)
        return vecs

    @staticmethod
    def _inject(texts: list[str], vecs: np.ndarray) -> None:
        joined = "\n".join(texts)
        if DEBUG_EXIT in joined:
            os._exit(DEBUG_EXIT_STATUS)  # a crash: no cleanup, no reply, no ack
        if DEBUG_HANG in joined:
            while True:
                time.sleep(3600)
        if DEBUG_RAISE in joined:
            raise RuntimeError("debug model asked to fail")
        for i, text in enumerate(texts):
            if DEBUG_NAN in text:
                vecs[i, 0] = np.nan


def debug_vectors(texts: list[str], dimensions: int, normalize: list[bool]) -> np.ndarray:
    """The debug model's vectors; tests use this to check what came back."""
    raw = b"".join(hashlib.shake_128(t.encode()).digest(dimensions) for t in texts)
    vecs = np.frombuffer(raw, dtype=np.int8).reshape(len(texts), dimensions).astype(np.float32)
    vecs /= 128.0
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    scale = np.where(np.asarray(normalize)[:, None], 1.0 / np.maximum(norms, 1e-12), 1.0)
    return (vecs * scale).astype(np.float32)
