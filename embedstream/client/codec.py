"""Request building and response decoding shared by both clients: EmbedRequest, JobSpec, vectors."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypedDict, TypeVar

import numpy as np

from embedstream.client import outputs as named
from embedstream.client.embeddings import Embeddings, SparseVector, matrix, sparse, stacked
from embedstream.client.media import MediaEmbedding, is_media
from embedstream.client.media import result as media_result
from embedstream.client.outputs import Outputs
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import jobs_pb2 as jpb

MAX_INPUTS = 256
T = TypeVar("T")

#: What ``input_type=`` takes in :meth:`Client.embed`.
INPUT_TYPES = {"": pb.INPUT_TYPE_UNSPECIFIED, "query": pb.INPUT_TYPE_QUERY, "document": pb.INPUT_TYPE_DOCUMENT}
#: What ``cache=`` takes: use the embedding cache, skip it, or recompute and overwrite (docs/cache.md).
CACHE_MODES = {"default": pb.CACHE_DEFAULT, "bypass": pb.CACHE_BYPASS, "refresh": pb.CACHE_REFRESH}


def cache_mode(cache: str) -> pb.CacheMode.ValueType:
    """The CacheMode of ``cache=``; ValueError naming the choices otherwise."""
    if cache not in CACHE_MODES:
        raise ValueError(f"cache must be one of {sorted(CACHE_MODES)}, not {cache!r}")
    return CACHE_MODES[cache]


class EmbedKwargs(TypedDict, total=False):
    """The keyword options of ``embed`` besides ``outputs``, as both clients' overloads declare them."""

    model: str | None
    normalize: bool | None
    truncate: bool | None
    input_type: str
    prompt_name: str
    dimensions: int | None
    cache: str


@dataclass(frozen=True, slots=True)
class EmbedOptions:
    """What every EmbedRequest of one call carries; None leaves an option to the model's default."""

    model: str
    normalize: bool | None = None
    truncate: bool | None = None
    input_type: str = ""
    prompt_name: str = ""
    dimensions: int | None = None
    cache: str = "default"
    #: Output names ("dense", "sparse", "multi-vector"); None = the model's primary output.
    outputs: Sequence[str] | None = None

    def __post_init__(self) -> None:
        if self.input_type not in INPUT_TYPES:
            raise ValueError(f"input_type must be one of {sorted(INPUT_TYPES)}")
        cache_mode(self.cache)
        if self.outputs is not None:
            named.kinds(self.outputs)  # a bad name fails before anything is sent

    def request(self, items: Sequence[str | bytes], rid: str = "") -> pb.EmbedRequest:
        """An EmbedRequest for float32 vectors: str items are texts, bytes items encoded images."""
        req = pb.EmbedRequest(
            model=self.model,
            request_id=rid,
            inputs=[pb.Input(image=t) if isinstance(t, bytes) else pb.Input(text=t) for t in items],
            encoding=pb.VECTOR_ENCODING_PACKED_F32LE,
            input_type=INPUT_TYPES[self.input_type],
            prompt_name=self.prompt_name,
            cache=cache_mode(self.cache),
        )
        if self.normalize is not None:
            req.normalize = self.normalize
        if self.truncate is not None:
            req.truncate = self.truncate
        if self.dimensions is not None:
            req.dimensions = self.dimensions
        if self.outputs is not None:
            req.outputs.extend(named.kinds(self.outputs))
        return req

    def requests(self, items: Sequence[str | bytes]) -> Iterator[pb.EmbedRequest]:
        """One request per ``MAX_INPUTS`` items, built as they are sent, for a unary ``embed`` of any length."""
        if isinstance(items, str | bytes):
            raise TypeError("embed() takes a sequence of texts; wrap a single text in a list")
        return (self.request(chunk) for chunk in chunks(items, MAX_INPUTS))


def gathered(parts: Sequence[pb.EmbedResponse], outputs: Sequence[str] | None) -> Embeddings | list[Outputs]:
    """One ``embed`` call's responses: the model's own form, or an :class:`Outputs` per input for ``outputs``."""
    if outputs is not None:
        return [o for p in parts for o in named.of(p, outputs)]
    return stacked(parts)


def rerank_request(query: str, documents: Sequence[str], model: str, top_n: int) -> pb.RerankRequest:
    """A RerankRequest for ``documents`` against ``query``."""
    return pb.RerankRequest(model=model, query=query, documents=list(documents), top_n=top_n)


def ranking(resp: pb.RerankResponse) -> list[tuple[int, float]]:
    """(document index, score) pairs, best first."""
    return [(r.index, r.score) for r in resp.results]


def job_spec(
    model: str, key: str, ttl: int, normalize: bool | None, truncate: bool | None, cache: str = "default"
) -> jpb.JobSpec:
    """The JobSpec both clients send; unset options stay unset (the model's defaults)."""
    spec = jpb.JobSpec(model=model, idempotency_key=key, ttl_seconds=ttl, cache=cache_mode(cache))
    if normalize is not None:
        spec.normalize = normalize
    if truncate is not None:
        spec.truncate = truncate
    return spec


def submit_request(spec: jpb.JobSpec, texts: Sequence[str]) -> jpb.SubmitJobRequest:
    """A SubmitJobRequest carrying ``texts`` inline."""
    return jpb.SubmitJobRequest(spec=spec, inputs=[pb.Input(text=t) for t in texts])


def upload_messages(spec: jpb.JobSpec, texts: Iterable[str], chunk_size: int) -> Iterator[jpb.UploadJobRequest]:
    """An UploadJob stream: the header, then ``texts`` read lazily in chunks."""
    yield jpb.UploadJobRequest(header=spec)
    for chunk in chunks(texts, chunk_size):
        yield jpb.UploadJobRequest(chunk=jpb.InputChunk(inputs=[pb.Input(text=t) for t in chunk]))


def results_request(job_id: str, offset: int) -> jpb.GetJobResultsRequest:
    """A GetJobResultsRequest for float32 vectors from ``offset``."""
    return jpb.GetJobResultsRequest(id=job_id, offset=offset, encoding=pb.VECTOR_ENCODING_PACKED_F32LE)


#: One job input's result: a vector, a sparse vector, a token matrix, or a clip's segments.
JobEmbedding = np.ndarray | SparseVector | MediaEmbedding


def job_result(job_id: str, result: jpb.JobResult, dimensions: int) -> tuple[int, JobEmbedding]:
    """(index, embedding) of one job result: a vector, a :class:`SparseVector`, or a (tokens, d) array
    for a multi-vector model; a failed input raises ``RuntimeError`` naming it."""
    if result.error:
        raise RuntimeError(f"job {job_id} input {result.index} failed: {result.error}")
    if is_media(result):
        return result.index, media_result(result.chunks, dimensions)
    emb = result.embedding
    if emb.HasField("sparse"):
        return result.index, sparse(emb, dimensions)
    if emb.rows:
        return result.index, matrix(emb, dimensions)
    return result.index, np.frombuffer(emb.packed, dtype="<f4")


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last may be shorter), read lazily."""
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk
