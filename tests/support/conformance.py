"""What the conformance suite shares: mixed-length texts, the tolerance, a served registry
(:class:`Served`) and the comparisons that print each family's max abs difference."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc
from tests.support.processes import Proc

#: Texts of mixed lengths: batched together they pad each other.
TEXTS = [
    "a photo of a cat",
    "Redis streams hold the queue while the workers embed every input in sorted batches.",
    "embedding models turn text into vectors, fast!",
    "ok",
]
TOLERANCE = 1e-4


class FamilyModels:
    """Tiny models of every family, each built the first time a test asks for it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._built: dict[str, Path] = {}

    def get(self, key: str, build: Callable[[Path], Path]) -> Path:
        """The model ``key``, built with ``build(folder)`` once per session."""
        if key not in self._built:
            self._built[key] = build(self.root / key)
        return self._built[key]


@dataclass
class Served:
    """One gateway and its workers serving a module's registry."""

    port: int
    env: dict[str, str]
    gateway: Proc
    workers: dict[str, Proc]
    stub: pb_grpc.EmbedderStub
    registry: Path
    logs: Path

    def embed(self, model: str, texts: list[str], **options: object) -> np.ndarray:
        """The float vectors the service returns for ``texts``, in one request."""
        request = pb.EmbedRequest(model=model, inputs=[pb.Input(text=t) for t in texts], **options)  # type: ignore[arg-type]
        resp = self.stub.Embed(request, timeout=60)
        return np.array([list(e.values) for e in resp.embeddings], dtype=np.float32)

    def models(self) -> dict[str, pb.ModelInfo]:
        return {m.name: m for m in self.stub.ListModels(pb.ListModelsRequest(), timeout=10).models}


def registry_toml(models: dict[str, dict[str, object]]) -> str:
    """A registry file's text for ``{name: {key: value}}`` (strings, lists, tables of strings)."""

    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
        return str(v)

    return "\n".join(
        f'[models."{name}"]\n' + "".join(f"{k} = {value(v)}\n" for k, v in raw.items()) for name, raw in models.items()
    )


def assert_close(got: np.ndarray, want: np.ndarray, what: str) -> float:
    """Max abs difference of ``got`` and ``want`` (same shape), asserted within TOLERANCE; printed."""
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    diff = float(np.abs(got - want).max())
    print(f"conformance {what}: max abs diff {diff:.2e}")
    assert diff <= TOLERANCE, f"{what}: max abs diff {diff:.2e} > {TOLERANCE}"
    return diff


def check_single_and_batched(served: Served, model: str, want: np.ndarray, what: str, **options: object) -> None:
    """Each text alone, and all of them in one mixed-length request, equal ``want`` row by row."""
    batched = served.embed(model, TEXTS, **options)
    assert_close(batched, want, f"{what} batch")
    singles = np.concatenate([served.embed(model, [t], **options) for t in TEXTS])
    assert_close(singles, want, f"{what} single")
