"""Turns a finished entry's model outputs into its reply: the 'finish' step.

Dense rows and token matrices get the request's Matryoshka cut,
re-normalization and output type here, on the worker, so the reply carries the
final bytes and the gateway only slices them. Sparse outputs travel as indices
and weights; rerank scores as one float32 per document; a classifier's logits
become scores with the function transformers' text-classification pipeline
applies (the same numpy code); Tokenize and Decode answers are filled in as they are.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from embedstream.workers import chunking, media, textops
from embedstream.workers.batcher import Entry

from embedstream import vectors, wire


def nonfinite(kind: str, outputs: Any) -> list[int]:
    """Rows of a batch's outputs holding NaN or Inf: they must never leave the worker."""
    if kind in ("dense", "score", "labels"):
        return [int(i) for i in np.flatnonzero(~np.isfinite(np.asarray(outputs)).all(axis=1))]
    if kind == "multi":
        return [i for i, m in enumerate(outputs) if not np.isfinite(m).all()]
    return [i for i, (_, weights) in enumerate(outputs) if not np.isfinite(weights).all()]


def reply(entry: Entry, model: Any, value_range: float, worker: str) -> wire.Reply:
    """The reply to a finished (or failed) entry."""
    job = entry.job
    if entry.error:
        return wire.Reply(job.id, worker=worker, error_code=entry.error[0], error_message=entry.error[1])
    out = wire.Reply(
        job.id,
        count=len(entry.results),
        tokens=sum(t.length for t in entry.tokens),
        truncated=sum(t.truncated for t in entry.tokens),
        queue_ms=max(0.0, entry.started_ms - job.enqueued_ms),
        inference_ms=entry.inference_ms,
        worker=worker,
        cached=entry.cached,
    )
    if job.kind != "embed":
        textops.fill(out, job.kind, entry.results)
        return out
    kind = model.output
    results = entry.results
    if entry.media is not None:
        results = media.pool(results, entry.media, job.dimensions, entry.normalize)
        out.count = len(results)
        out.segments = entry.media.flat()
    elif entry.chunks is not None:
        out.chunks = len(results)
        if job.chunk_vectors:
            out.spans = entry.chunks.flat()
        else:
            results = chunking.pool(kind, results, entry.chunks, job.dimensions, entry.normalize)
            out.count = len(results)
    if kind == "sparse":
        pairs: list[tuple[np.ndarray, np.ndarray]] = results
        out.dimensions = model.dimensions
        out.nnz = [len(idx) for idx, _ in pairs]
        out.indices = b"".join(idx.astype("<u4", copy=False).tobytes() for idx, _ in pairs)
        out.vectors = b"".join(val.astype("<f4", copy=False).tobytes() for _, val in pairs)
        if job.return_tokens:
            out.token_strings = [s for idx, _ in pairs for s in model.token_strings(idx)]
        return out
    if kind == "labels":
        logits = np.stack(results).astype(np.float32)
        out.dimensions = logits.shape[1]
        out.labels = list(model.labels)
        out.vectors = scores(logits, job.function or model.function).astype("<f4").tobytes()
        out.logits = logits.astype("<f4").tobytes() if job.return_logits else b""
        return out
    if kind == "multi":
        matrices: list[np.ndarray] = results
        out.rows = [m.shape[0] for m in matrices]
        stacked = np.concatenate(matrices) if matrices else np.zeros((0, model.dimensions), np.float32)
    else:
        stacked = np.stack(results)
    out.dimensions = min(job.dimensions or stacked.shape[1], stacked.shape[1])
    out.output_type = job.output_type
    out.vectors = vectors.finish(stacked, job.dimensions, entry.normalize, job.output_type, value_range)
    return out


def scores(logits: np.ndarray, function: str) -> np.ndarray:
    """A classifier's scores, as transformers' text-classification pipeline computes them."""
    if function == "sigmoid":
        return np.asarray(1.0 / (1.0 + np.exp(-logits)))
    if function == "softmax":
        shifted = np.exp(logits - np.max(logits, axis=-1, keepdims=True))
        return np.asarray(shifted / shifted.sum(axis=-1, keepdims=True))
    return logits
