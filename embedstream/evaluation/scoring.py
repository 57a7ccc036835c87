"""Exact search: every query scored against every document, the top k kept.

Dense vectors score by dot product (cosine for normalized models), sparse vectors by
the dot product of their shared vocabulary ids, multi-vector embeddings by MaxSim
(ColBERT: for each query vector the best-matching document vector, summed).
Quantized output types are scored as numbers: int8/uint8 centred on zero, binary
types as ±1 per bit, whose dot product ranks documents as Hamming distance does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy as np

from embedstream.vectors import unpack

#: A sparse vector: ascending vocabulary ids and their weights.
Sparse: TypeAlias = tuple[np.ndarray, np.ndarray]
#: One query block at a time bounds the score matrix to BLOCK x documents.
BLOCK = 256


def as_float(data: bytes, output_type: str, dimensions: int) -> np.ndarray:
    """Rows of packed ``output_type`` bytes as float32 numbers whose dot products rank like the type's similarity."""
    rows = unpack(data, output_type, dimensions)
    if output_type in ("binary", "ubinary"):
        packed = (rows.astype(np.int16) + 128).astype(np.uint8) if output_type == "binary" else rows
        bits = np.unpackbits(packed, axis=-1)
        return bits[:, :dimensions].astype(np.float32) * 2 - 1
    if output_type == "uint8":
        return rows.astype(np.float32) - 128  # the same numbers int8 carries
    return rows.astype(np.float32)


def dense_scores(queries: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """(queries, documents) dot products."""
    scores: np.ndarray = queries @ docs.T
    return scores


def sparse_scores(queries: Sequence[Sparse], docs: Sequence[Sparse]) -> np.ndarray:
    """(queries, documents) dot products of sparse vectors."""
    if not docs:
        return np.zeros((len(queries), 0), dtype=np.float32)
    owner = np.repeat(np.arange(len(docs)), [len(ids) for ids, _ in docs])
    ids = np.concatenate([i for i, _ in docs]).astype(np.int64)
    weights = np.concatenate([w for _, w in docs]).astype(np.float64)
    size = int(max([ids.max(initial=-1), *(q.max(initial=-1) for q, _ in queries)])) + 1
    out = np.zeros((len(queries), len(docs)), dtype=np.float32)
    dense_query = np.zeros(size, dtype=np.float64)
    for n, (q_ids, q_weights) in enumerate(queries):
        dense_query[q_ids] = q_weights
        out[n] = np.bincount(owner, weights=dense_query[ids] * weights, minlength=len(docs))
        dense_query[q_ids] = 0
    return out


def maxsim_scores(queries: Sequence[np.ndarray], docs: Sequence[np.ndarray]) -> np.ndarray:
    """(queries, documents) late-interaction scores: sum over query vectors of the best document vector's dot."""
    if any(len(d) == 0 for d in docs):
        raise ValueError("a multi-vector document has no vectors")
    if not docs:
        return np.zeros((len(queries), 0), dtype=np.float32)
    tokens = np.concatenate(docs)
    starts = np.cumsum([0, *(len(d) for d in docs[:-1])])
    out = np.zeros((len(queries), len(docs)), dtype=np.float32)
    for n, query in enumerate(queries):
        sims = query @ tokens.T  # (query vectors, every document vector)
        out[n] = np.maximum.reduceat(sims, starts, axis=1).sum(axis=0)
    return out


SCORERS: dict[str, Any] = {"dense": dense_scores, "sparse": sparse_scores, "multi": maxsim_scores}


def search(
    kind: str, queries: Any, docs: Any, query_ids: Sequence[str], doc_ids: Sequence[str], k: int = 100
) -> dict[str, dict[str, float]]:
    """The top ``k`` documents of every query with their scores: {query id: {doc id: score}}."""
    scorer = SCORERS[kind]
    k = min(k, len(doc_ids))
    run: dict[str, dict[str, float]] = {}
    for start in range(0, len(query_ids), BLOCK):
        scores = scorer(queries[start : start + BLOCK], docs)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else np.argsort(-scores, axis=1)
        for row, qid in enumerate(query_ids[start : start + BLOCK]):
            run[qid] = {doc_ids[j]: float(scores[row, j]) for j in top[row]}
    return run
