"""What ``embed`` returns for each model family: dense arrays, :class:`SparseVector` lists, token matrices.

- dense (text, image+text): one float32 array of shape (n, dimensions);
- sparse (SPLADE): a list of n :class:`SparseVector`, the non-zero vocabulary ids and weights;
- multi-vector (ColBERT): a list of n float32 arrays, each (tokens kept, dimensions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from embedstream.v1 import embedder_pb2 as pb


@dataclass(frozen=True, eq=False)
class SparseVector:
    """A sparse vector over a vocabulary: weight ``values[i]`` at id ``indices[i]`` (ascending), of ``dimensions``."""

    indices: np.ndarray
    values: np.ndarray
    dimensions: int
    #: The token of each index, when the request asked for them.
    tokens: tuple[str, ...] = field(default=())

    def to_dense(self) -> np.ndarray:
        """The full float32 vector of length ``dimensions``."""
        out = np.zeros(self.dimensions, dtype=np.float32)
        out[self.indices] = self.values
        return out

    def __len__(self) -> int:
        return int(self.indices.size)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, SparseVector)
            and self.dimensions == other.dimensions
            and np.array_equal(self.indices, other.indices)
            and np.array_equal(self.values, other.values)
            and self.tokens == other.tokens
        )

    __hash__ = None  # type: ignore[assignment]


#: One call's result: a dense (n, d) array, n sparse vectors, or n (tokens, d) arrays.
Embeddings = np.ndarray | list[SparseVector] | list[np.ndarray]


def sparse(emb: pb.Embedding, dimensions: int) -> SparseVector:
    """One sparse embedding."""
    return SparseVector(
        np.array(emb.sparse.indices, dtype=np.uint32),
        np.array(emb.sparse.values, dtype=np.float32),
        dimensions,
        tuple(emb.sparse.tokens),
    )


def matrix(emb: pb.Embedding, dimensions: int) -> np.ndarray:
    """One multi-vector embedding as a (rows, dimensions) float32 array."""
    flat = np.frombuffer(emb.packed, dtype="<f4") if emb.packed else np.array(emb.values, dtype=np.float32)
    return flat.astype(np.float32).reshape(emb.rows, dimensions)


def is_sparse(resp: pb.EmbedResponse) -> bool:
    """Whether ``resp`` holds sparse vectors."""
    return any(e.HasField("sparse") for e in resp.embeddings)


def is_multi(resp: pb.EmbedResponse) -> bool:
    """Whether ``resp`` holds multi-vector (per-token) embeddings."""
    return any(e.rows for e in resp.embeddings)


def vectors(resp: pb.EmbedResponse) -> Embeddings:
    """The response's embeddings in input order, in the form of the model's family (see the module)."""
    if is_sparse(resp):
        return [sparse(e, resp.dimensions) for e in resp.embeddings]
    if is_multi(resp):
        return [matrix(e, resp.dimensions) for e in resp.embeddings]
    if resp.embeddings and resp.embeddings[0].packed:
        raw = b"".join(e.packed for e in resp.embeddings)
        return np.frombuffer(raw, dtype="<f4").reshape(len(resp.embeddings), resp.dimensions).astype(np.float32)
    return np.array([list(e.values) for e in resp.embeddings], dtype=np.float32).reshape(-1, resp.dimensions)


def joined(parts: Sequence[Embeddings]) -> Embeddings:
    """``parts`` in order as one result of the same form; a (0, 0) array for none."""
    if not parts:
        return np.zeros((0, 0), dtype=np.float32)
    arrays = [p for p in parts if isinstance(p, np.ndarray)]
    if len(arrays) == len(parts):
        return np.concatenate(arrays)
    out: list[SparseVector] | list[np.ndarray] = []
    for part in parts:
        out.extend(part)  # type: ignore[arg-type]
    return out


def stacked(parts: Sequence[pb.EmbedResponse]) -> Embeddings:
    """The embeddings of ``parts`` in order as one result."""
    return joined([vectors(p) for p in parts])
