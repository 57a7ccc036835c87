"""Request building and response decoding shared by both clients: EmbedRequest, JobSpec, vectors."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import jobs_pb2 as jpb

MAX_INPUTS = 256
T = TypeVar("T")

#: What ``input_type=`` takes in :meth:`Client.embed`.
INPUT_TYPES = {"": pb.INPUT_TYPE_UNSPECIFIED, "query": pb.INPUT_TYPE_QUERY, "document": pb.INPUT_TYPE_DOCUMENT}


def embed_request(
    texts: Sequence[str | bytes],
    model: str,
    normalize: bool | None,
    truncate: bool | None,
    rid: str,
    options: dict[str, Any] | None = None,
) -> pb.EmbedRequest:
    """An EmbedRequest for float32 vectors: str items are texts, bytes items encoded images."""
    opts = dict(options or {})
    if opts.get("input_type", "") not in INPUT_TYPES:
        raise ValueError(f"input_type must be one of {sorted(INPUT_TYPES)}")
    req = pb.EmbedRequest(
        model=model,
        request_id=rid,
        inputs=[pb.Input(image=t) if isinstance(t, bytes) else pb.Input(text=t) for t in texts],
        encoding=pb.VECTOR_ENCODING_PACKED_F32LE,
        input_type=INPUT_TYPES[opts.get("input_type", "")],
        prompt_name=opts.get("prompt_name", ""),
    )
    if normalize is not None:
        req.normalize = normalize
    if truncate is not None:
        req.truncate = truncate
    if opts.get("dimensions") is not None:
        req.dimensions = opts["dimensions"]
    return req


def rerank_request(query: str, documents: Sequence[str], model: str, top_n: int) -> pb.RerankRequest:
    return pb.RerankRequest(model=model, query=query, documents=list(documents), top_n=top_n)


def ranking(resp: pb.RerankResponse) -> list[tuple[int, float]]:
    """(document index, score) pairs, best first."""
    return [(r.index, r.score) for r in resp.results]


def job_spec(model: str, key: str, ttl: int, normalize: bool | None, truncate: bool | None) -> jpb.JobSpec:
    """The JobSpec both clients send; unset options stay unset (the model's defaults)."""
    spec = jpb.JobSpec(model=model, idempotency_key=key, ttl_seconds=ttl)
    if normalize is not None:
        spec.normalize = normalize
    if truncate is not None:
        spec.truncate = truncate
    return spec


def vectors(resp: pb.EmbedResponse) -> np.ndarray:
    """The response's vectors as a (n, dimensions) float32 array."""
    if resp.embeddings and resp.embeddings[0].packed:
        raw = b"".join(e.packed for e in resp.embeddings)
        return np.frombuffer(raw, dtype="<f4").reshape(len(resp.embeddings), resp.dimensions).astype(np.float32)
    return np.array([list(e.values) for e in resp.embeddings], dtype=np.float32).reshape(-1, resp.dimensions)


def chunks(texts: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(texts)
    while chunk := list(itertools.islice(it, size)):
        yield chunk
