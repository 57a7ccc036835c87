"""A worker's reply as protobuf Embeddings, in the encoding the caller asked for.

Shared by Embed, EmbedStream and GetJobResults (``job_results`` reads a stored job
chunk). The reply already holds the final bytes (cut, normalized, quantized by the
worker); shaping only slices them, or turns them into number lists for
VECTOR_ENCODING_FLOAT_LIST. Every response's metadata, and the check that a reply
answers its request, are here too.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np

from embedstream import jobstore, mediawire, metrics, replywire, vectors
from embedstream.errors import EmbedstreamError, InternalError
from embedstream.gateway import mediacheck
from embedstream.gateway.dispatch import Request
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import jobs_pb2 as jobs_pb

PACKED = (pb.VECTOR_ENCODING_PACKED_F32LE, pb.VECTOR_ENCODING_PACKED)


def embeddings(reply: replywire.Reply, encoding: int, first: int = 0) -> list[pb.Embedding]:
    """One Embedding per input of ``reply``, from input ``first`` on."""
    if reply.outputs is not None:
        return _named(reply, encoding, first)
    if reply.nnz is not None:
        return _sparse(reply, reply.vectors, first)
    width = vectors.row_bytes(reply.output_type, reply.dimensions)
    raw = reply.vectors
    if reply.rows is None:
        if encoding in PACKED:
            return [pb.Embedding(packed=raw[i * width : (i + 1) * width]) for i in range(first, reply.count)]
        rows = vectors.unpack(raw, reply.output_type, reply.dimensions)[first:]
        if reply.output_type.startswith("float"):
            return [pb.Embedding(values=row) for row in rows.astype(np.float32, copy=False).tolist()]
        return [pb.Embedding(int_values=row) for row in rows.astype(np.int32).tolist()]
    out = []
    offset = sum(reply.rows[:first]) * width
    for n in reply.rows[first:]:
        data = raw[offset : offset + n * width]
        offset += n * width
        if encoding in PACKED:
            out.append(pb.Embedding(packed=data, rows=n))
        else:
            matrix = vectors.unpack(data, reply.output_type, reply.dimensions)
            embedding = _listed(matrix, reply.output_type)
            embedding.rows = n
            out.append(embedding)
    return out


def chunked(reply: replywire.Reply, encoding: int) -> list[pb.Embedding]:
    """Every Embedding of ``reply``, each with its ChunkSpan when the reply holds chunks, or its
    Segment when the request held video or audio."""
    out = embeddings(reply, encoding)
    for embedding, seg in zip(out, mediawire.unflatten(reply.segments or [])):
        embedding.segment.CopyFrom(
            pb.Segment(
                input=seg.input,
                index=seg.index,
                start_s=seg.start_s,
                end_s=seg.end_s,
                pooled=seg.pooled,
                frames=seg.frames,
            )
        )
    spans = reply.spans or []
    for k, embedding in enumerate(out[: len(spans) // 5]):
        i, ts, te, cs, ce = spans[5 * k : 5 * k + 5]
        embedding.chunk.CopyFrom(pb.ChunkSpan(input=i, token_start=ts, token_end=te, char_start=cs, char_end=ce))
    return out


def _listed(matrix: np.ndarray, output_type: str) -> pb.Embedding:
    if output_type.startswith("float"):
        return pb.Embedding(values=matrix.astype(np.float32, copy=False).ravel().tolist())
    return pb.Embedding(int_values=matrix.astype(np.int32).ravel().tolist())


def _named(reply: replywire.Reply, encoding: int, first: int) -> list[pb.Embedding]:
    """Each asked output in its own field: dense in values/packed, sparse, multi_vector."""
    asked = reply.outputs or []
    if "dense" in asked:
        out = embeddings(
            replywire.Reply(reply.id, reply.vectors, reply.dimensions, reply.count, reply.output_type), encoding
        )
    else:
        out = [pb.Embedding() for _ in range(reply.count)]
    if "sparse" in asked:
        for embedding, sparse in zip(out, _sparse(reply, reply.sparse_weights, 0)):
            embedding.sparse.CopyFrom(sparse.sparse)
    if "multi-vector" in asked:
        multi = replywire.Reply(reply.id, reply.multi, reply.multi_dimensions, reply.count, reply.output_type)
        multi.rows = reply.multi_rows
        for embedding, matrix in zip(out, embeddings(multi, encoding)):
            embedding.multi_vector.CopyFrom(
                pb.MultiVector(
                    values=matrix.values, packed=matrix.packed, int_values=matrix.int_values, rows=matrix.rows
                )
            )
    return out[first:]


def _sparse(reply: replywire.Reply, weights_raw: bytes, first: int) -> list[pb.Embedding]:
    assert reply.nnz is not None
    indices = np.frombuffer(reply.indices, dtype="<u4")
    weights = np.frombuffer(weights_raw, dtype="<f4")
    starts = np.concatenate([[0], np.cumsum(reply.nnz)]).astype(int)
    out = []
    for i in range(first, reply.count):
        lo, hi = starts[i], starts[i + 1]
        sparse = pb.SparseVector(indices=indices[lo:hi].tolist(), values=weights[lo:hi].tolist())
        if reply.token_strings is not None:
            sparse.tokens.extend(reply.token_strings[lo:hi])
        out.append(pb.Embedding(sparse=sparse))
    return out


def metadata(reply: replywire.Reply, received: float) -> pb.ResponseMetadata:
    """A response's usage and timing, from its reply and when the call came in (``time.perf_counter``)."""
    return pb.ResponseMetadata(
        tokens=reply.tokens,
        queue_ms=reply.queue_ms,
        inference_ms=reply.inference_ms,
        total_ms=(time.perf_counter() - received) * 1000.0,
        worker=reply.worker,
        truncated_inputs=reply.truncated,
        chunks=reply.chunks,
        cached_inputs=reply.cached,
    )


def answered(request_id: str, valid: Request, reply: replywire.Reply, received: float) -> dict[str, Any]:
    """What every response but Embed's carries (request id, model, metadata); the call's latency is recorded."""
    metrics.LATENCY.labels(valid.spec.name).observe(time.perf_counter() - received)
    return {
        "request_id": request_id or uuid.uuid4().hex,
        "model": valid.spec.name,
        "metadata": metadata(reply, received),
    }


def checked(valid: Request, reply: replywire.Reply) -> None:
    """Raise the reply's error, or INTERNAL where it does not answer every input of ``valid``."""
    if not reply.ok:
        raise EmbedstreamError.from_code(reply.error_code, reply.error_message)
    if reply.spans is not None:
        if {reply.spans[k] for k in range(0, len(reply.spans), 5)} != set(range(len(valid.inputs))):
            raise EmbedstreamError.from_code("INTERNAL", "worker returned chunks that do not cover every input")
    elif reply.segments is not None:
        if {s.input for s in mediawire.unflatten(reply.segments)} != set(range(len(valid.inputs))):
            raise EmbedstreamError.from_code("INTERNAL", "worker returned segments that do not cover every input")
    elif reply.count != len(valid.inputs):
        raise EmbedstreamError.from_code(
            "INTERNAL", f"worker returned {reply.count} vectors for {len(valid.inputs)} inputs"
        )


def job_results(value: bytes, chunk_start: int, first: int, encoding: int) -> list[jobs_pb.JobResult]:
    """The JobResults of one stored chunk (``jobstore.encode_chunk``), from input ``first`` on."""
    try:
        chunk = jobstore.decode_chunk(value)
    except replywire.WireError as exc:
        raise InternalError(str(exc)) from None
    if chunk.reply is None:
        return [jobs_pb.JobResult(index=i, error=chunk.error) for i in range(first, chunk_start + chunk.failed)]
    if chunk.reply.segments is not None:
        return mediacheck.job_results(chunked(chunk.reply, encoding), chunk_start, first)
    if chunk.reply.spans is not None:
        results = [
            jobs_pb.JobResult(index=chunk_start + i)
            for i in range(len(chunk.reply.spans) and chunk.reply.spans[-5] + 1)
        ]
        for e in chunked(chunk.reply, encoding):
            e.chunk.input += chunk_start  # the input's index in the job, as JobResult.index
            results[e.chunk.input - chunk_start].chunks.append(e)
        return results[first - chunk_start :]
    items = embeddings(chunk.reply, encoding, first - chunk_start)
    return [jobs_pb.JobResult(index=first + i, embedding=e) for i, e in enumerate(items)]
