"""Turns a finished entry's model outputs into its reply: the 'finish' step.

Dense rows and token matrices get the request's Matryoshka cut,
re-normalization and output type here, on the worker, so the reply carries the
final bytes and the gateway only slices them. Sparse outputs travel as indices
and weights; rerank scores as one float32 per document; a classifier's logits
become scores with the function transformers' text-classification pipeline
applies (the same numpy code); Tokenize and Decode answers are filled in as they
are. A job that names its ``outputs`` gets each in its own reply fields (``wire``
documents them); a job that names none gets the model's primary output in the
original layout. Models of several outputs (BGE-M3, ``output == "outputs"``)
give a dict per input.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from embedstream import replywire, vectors, wire
from embedstream.workers import chunking, media, textops
from embedstream.workers.batcher import Entry

#: The model ``output`` kind of each registry output name.
KINDS = {"dense": "dense", "sparse": "sparse", "multi-vector": "multi"}
NAMES = {kind: name for name, kind in KINDS.items()}


def nonfinite(kind: str, outputs: Any) -> list[int]:
    """Rows of a batch's outputs holding NaN or Inf: they must never leave the worker."""
    if kind == "outputs":
        names = outputs[0] if outputs else {}
        return sorted({i for name in names for i in nonfinite(KINDS[name], [o[name] for o in outputs])})
    if kind in ("dense", "score", "labels"):
        return [int(i) for i in np.flatnonzero(~np.isfinite(np.asarray(outputs)).all(axis=1))]
    if kind == "multi":
        return [i for i, m in enumerate(outputs) if not np.isfinite(m).all()]
    return [i for i, (_, weights) in enumerate(outputs) if not np.isfinite(weights).all()]


def reply(entry: Entry, model: Any, value_range: float, worker: str) -> replywire.Reply:
    """The reply to a finished (or failed) entry."""
    job = entry.job
    if entry.error:
        return replywire.Reply(job.id, worker=worker, error_code=entry.error[0], error_message=entry.error[1])
    out = replywire.Reply(
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
    if model.output == "labels":
        _labels(out, job, model, entry.results)
        return out
    several = model.output == "outputs"
    # Rerank scores travel as a one-column dense matrix.
    names = list(job.outputs) or [model.outputs[0] if several else NAMES.get(model.output, "dense")]
    per_name = {n: [r[n] for r in entry.results] if several else entry.results for n in names}
    if entry.media is not None:  # media families are dense: one vector per segment
        per_name = {n: media.pool(r, entry.media, job.dimensions, entry.normalize) for n, r in per_name.items()}
        out.count = len(per_name[names[0]])
        out.segments = entry.media.flat()
    elif entry.chunks is not None:
        out.chunks = len(entry.results)
        if job.chunk_vectors:
            out.spans = entry.chunks.flat()
        else:
            # A several-output model's sparse weights are never normalized (BGE-M3's lexical weights).
            per_name = {
                n: chunking.pool(
                    KINDS[n], r, entry.chunks, job.dimensions, entry.normalize and not (several and n == "sparse")
                )
                for n, r in per_name.items()
            }
            out.count = entry.chunks.inputs
    if job.outputs:
        out.outputs = list(job.outputs)
    for name, results in per_name.items():
        _put(out, entry, name, results, model, value_range, named=bool(job.outputs))
    return out


def _put(
    out: replywire.Reply, entry: Entry, name: str, results: list[Any], model: Any, value_range: float, named: bool
) -> None:
    """One output's bytes into ``out``: its own fields when ``named``, else the original layout."""
    job = entry.job
    width = int(getattr(model, "output_dimensions", {}).get(name, model.dimensions))
    if name == "sparse":
        pairs: list[tuple[np.ndarray, np.ndarray]] = results
        out.nnz = [len(idx) for idx, _ in pairs]
        out.indices = b"".join(idx.astype("<u4", copy=False).tobytes() for idx, _ in pairs)
        weights = b"".join(val.astype("<f4", copy=False).tobytes() for _, val in pairs)
        if job.return_tokens:
            out.token_strings = [s for idx, _ in pairs for s in model.token_strings(idx)]
        if named:
            out.sparse_weights, out.sparse_dimensions = weights, width
        else:
            out.vectors, out.dimensions = weights, width
        return
    if name == "multi-vector":
        matrices: list[np.ndarray] = results
        rows = [m.shape[0] for m in matrices]
        stacked = np.concatenate(matrices) if matrices else np.zeros((0, width), np.float32)
    else:
        rows = None
        stacked = np.stack(results)
    dimensions = min(job.dimensions or stacked.shape[1], stacked.shape[1])
    data = vectors.finish(stacked, job.dimensions, entry.normalize, job.output_type, value_range)
    out.output_type = job.output_type
    if named and name == "multi-vector":
        out.multi, out.multi_rows, out.multi_dimensions = data, rows, dimensions
    else:
        out.vectors, out.rows, out.dimensions = data, rows, dimensions


def _labels(out: replywire.Reply, job: wire.Job, model: Any, results: list[Any]) -> None:
    """A classifier's scores (and, where asked, its logits) with its labels."""
    logits = np.stack(results).astype(np.float32)
    out.dimensions = logits.shape[1]
    out.labels = list(model.labels)
    out.vectors = scores(logits, job.function or model.function).astype("<f4").tobytes()
    out.logits = logits.astype("<f4").tobytes() if job.return_logits else b""


def scores(logits: np.ndarray, function: str) -> np.ndarray:
    """A classifier's scores, as transformers' text-classification pipeline computes them."""
    if function == "sigmoid":
        return np.asarray(1.0 / (1.0 + np.exp(-logits)))
    if function == "softmax":
        shifted = np.exp(logits - np.max(logits, axis=-1, keepdims=True))
        return np.asarray(shifted / shifted.sum(axis=-1, keepdims=True))
    return logits
