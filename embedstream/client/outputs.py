"""What a request that names its outputs gives a Python client: one :class:`Outputs` per input.

Models such as BGE-M3 return dense, sparse and multi-vector outputs from one
pass; ``Client.embed(..., outputs=[...])`` asks for some of them and gets each
input's as numpy arrays and a :class:`SparseVector`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from embedstream.client.embeddings import SparseVector, sparse
from embedstream.v1 import embedder_pb2 as pb

#: The names ``outputs=`` takes, and the proto value of each.
KINDS = {"dense": pb.VECTOR_KIND_DENSE, "sparse": pb.VECTOR_KIND_SPARSE, "multi-vector": pb.VECTOR_KIND_MULTI_VECTOR}


@dataclass(frozen=True, slots=True)
class Outputs:
    """One input's outputs; those not asked for are None."""

    #: (dimensions,) float32.
    dense: np.ndarray | None = None
    #: The non-zero vocabulary ids and their weights.
    sparse: SparseVector | None = None
    #: (tokens, dimensions) float32.
    multi_vector: np.ndarray | None = None


def kinds(names: Sequence[str]) -> list[pb.VectorKind.ValueType]:
    """The proto values of output names; a ValueError names an unknown one."""
    if isinstance(names, str):
        raise TypeError("outputs takes a sequence of names, like ['dense', 'sparse']")
    unknown = [n for n in names if n not in KINDS]
    if unknown:
        raise ValueError(f"outputs: unknown {unknown}; choose from {sorted(KINDS)}")
    return [KINDS[n] for n in names]


def of(resp: pb.EmbedResponse, names: Sequence[str]) -> list[Outputs]:
    """Each input's asked outputs from a float32 response (any encoding)."""
    out = []
    for e in resp.embeddings:
        dense = _floats(e.values, e.packed, 1, resp.dimensions)[0] if "dense" in names else None
        lexical = sparse(e, resp.sparse_dimensions) if "sparse" in names else None
        mv = e.multi_vector
        multi = (
            _floats(mv.values, mv.packed, mv.rows, resp.multi_vector_dimensions) if "multi-vector" in names else None
        )
        out.append(Outputs(dense, lexical, multi))
    return out


def _floats(values: Sequence[float], packed: bytes, rows: int, width: int) -> np.ndarray:
    flat = np.frombuffer(packed, dtype="<f4") if packed else np.asarray(values, dtype=np.float32)
    return flat.reshape(rows, width).astype(np.float32)
