"""A worker's reply as protobuf Embeddings, in the encoding the caller asked for.

Shared by Embed, EmbedStream and GetJobResults. The reply already holds the
final bytes (cut, normalized, quantized by the worker); shaping only slices
them, or turns them into number lists for VECTOR_ENCODING_FLOAT_LIST.
"""

from __future__ import annotations

import numpy as np

from embedstream import vectors, wire
from embedstream.v1 import embedder_pb2 as pb

PACKED = (pb.VECTOR_ENCODING_PACKED_F32LE, pb.VECTOR_ENCODING_PACKED)


def embeddings(reply: wire.Reply, encoding: int, first: int = 0) -> list[pb.Embedding]:
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


def chunked(reply: wire.Reply, encoding: int) -> list[pb.Embedding]:
    """Every Embedding of ``reply``, each with its ChunkSpan when the reply holds chunks."""
    out = embeddings(reply, encoding)
    spans = reply.spans or []
    for k, embedding in enumerate(out[: len(spans) // 5]):
        i, ts, te, cs, ce = spans[5 * k : 5 * k + 5]
        embedding.chunk.CopyFrom(pb.ChunkSpan(input=i, token_start=ts, token_end=te, char_start=cs, char_end=ce))
    return out


def _listed(matrix: np.ndarray, output_type: str) -> pb.Embedding:
    if output_type.startswith("float"):
        return pb.Embedding(values=matrix.astype(np.float32, copy=False).ravel().tolist())
    return pb.Embedding(int_values=matrix.astype(np.int32).ravel().tolist())


def _named(reply: wire.Reply, encoding: int, first: int) -> list[pb.Embedding]:
    """Each asked output in its own field: dense in values/packed, sparse, multi_vector."""
    asked = reply.outputs or []
    if "dense" in asked:
        out = embeddings(
            wire.Reply(reply.id, reply.vectors, reply.dimensions, reply.count, reply.output_type), encoding
        )
    else:
        out = [pb.Embedding() for _ in range(reply.count)]
    if "sparse" in asked:
        for embedding, sparse in zip(out, _sparse(reply, reply.sparse_weights, 0)):
            embedding.sparse.CopyFrom(sparse.sparse)
    if "multi-vector" in asked:
        multi = wire.Reply(reply.id, reply.multi, reply.multi_dimensions, reply.count, reply.output_type)
        multi.rows = reply.multi_rows
        for embedding, matrix in zip(out, embeddings(multi, encoding)):
            embedding.multi_vector.CopyFrom(
                pb.MultiVector(
                    values=matrix.values, packed=matrix.packed, int_values=matrix.int_values, rows=matrix.rows
                )
            )
    return out[first:]


def _sparse(reply: wire.Reply, weights_raw: bytes, first: int) -> list[pb.Embedding]:
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
