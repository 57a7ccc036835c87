"""The blocking client: ``Client`` and its ``JobHandle``."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar, Unpack, overload

import grpc

from embedstream.client import codec, media
from embedstream.client.base import BaseClient
from embedstream.client.channel import Bearer, api_key_or_env, dial
from embedstream.client.embeddings import Embeddings
from embedstream.client.jobs import TERMINAL, Handle, Watch
from embedstream.client.outputs import Outputs
from embedstream.client.retry import Retry
from embedstream.client.window import Window, feed
from embedstream.tls import TLS
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc
from embedstream.v1 import jobs_pb2 as jpb
from embedstream.v1 import jobs_pb2_grpc as jpb_grpc

T = TypeVar("T")


class Client(BaseClient):
    """A blocking client for one gateway address (or a comma-separated list)."""

    def __init__(
        self,
        target: str = "localhost:50051",
        *,
        model: str = "",
        timeout: float = 60.0,
        retry: Retry | None = None,
        channel: grpc.Channel | None = None,
        api_key: str | None = None,
        tls: TLS | None = None,
    ) -> None:
        super().__init__(target, model, timeout, retry, tls)
        channel = channel or dial(grpc, target, tls)
        key = api_key_or_env(api_key)
        self._channel = grpc.intercept_channel(channel, Bearer(key)) if key else channel
        self._stub = pb_grpc.EmbedderStub(self._channel)
        self._jobs = jpb_grpc.JobsStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    @overload
    def embed(
        self, texts: Sequence[str | bytes], *, outputs: None = None, **options: Unpack[codec.EmbedKwargs]
    ) -> Embeddings: ...

    @overload
    def embed(
        self, texts: Sequence[str | bytes], *, outputs: Sequence[str], **options: Unpack[codec.EmbedKwargs]
    ) -> list[Outputs]: ...

    def embed(
        self,
        texts: Sequence[str | bytes],
        *,
        model: str | None = None,
        normalize: bool | None = None,
        truncate: bool | None = None,
        input_type: str = "",
        prompt_name: str = "",
        dimensions: int | None = None,
        cache: str = "default",
        outputs: Sequence[str] | None = None,
    ) -> Embeddings | list[Outputs]:
        """Embeddings of ``texts`` (str) and images (encoded bytes), in input order; any length.

        A dense model gives one float32 (n, dimensions) array; a sparse model a list of n
        :class:`SparseVector`; a multi-vector model a list of n float32 (tokens, dimensions)
        arrays. ``input_type`` ("query"/"document") or ``prompt_name`` pick the model's prompt
        (and a multi-vector model's query or document encoding); ``dimensions`` a Matryoshka
        size it declares. ``cache`` ("default", "bypass", "refresh") uses, skips or recomputes the
        server's embedding cache. ``outputs`` (some of "dense", "sparse", "multi-vector", as the model
        offers) returns one :class:`Outputs` per input instead. Other output types: call
        :attr:`stub` with an EmbedRequest.
        A call that fails for good raises :class:`EmbedstreamError`.
        """
        options = codec.EmbedOptions(
            self._name(model), normalize, truncate, input_type, prompt_name, dimensions, cache, outputs
        )

        def call(request: pb.EmbedRequest) -> pb.EmbedResponse:
            response: pb.EmbedResponse = self._with_retry(lambda: self._stub.Embed(request, timeout=self.timeout))
            return response

        return codec.gathered([call(request) for request in options.requests(texts)], outputs)

    def embed_media(
        self,
        clips: Sequence[media.Clip],
        *,
        kind: str = "video",
        model: str | None = None,
        sampling: media.Sampling = media.DEFAULT,
        rate: float = 0.0,
        normalize: bool | None = None,
    ) -> list[media.MediaEmbedding]:
        """One :class:`MediaEmbedding` per clip (a path, encoded bytes, or a numpy array at ``rate``
        frames per second or Hz), each clip a request of its own; ``kind`` is "video" (image+text
        models) or "audio" (audio+text models), ``sampling`` how clips become segments."""
        out = []
        for request in self._media_requests(clips, kind, model, sampling, rate, normalize):
            resp: pb.EmbedResponse = self._with_retry(
                functools.partial(self._stub.Embed, request, timeout=self.timeout)
            )
            out.append(media.result(resp.embeddings, resp.dimensions))
        return out

    def embed_stream(
        self,
        texts: Iterable[str],
        *,
        batch_size: int = 64,
        window: int = 2048,
        model: str | None = None,
        normalize: bool | None = None,
        truncate: bool | None = None,
        cache: str = "default",
    ) -> Iterator[Embeddings]:
        """Yield the embeddings of each ``batch_size`` texts in :meth:`embed`'s form, in order, read lazily.

        At most ``window`` texts are sent and unanswered at any time, so memory
        stays bounded for any corpus size. A broken stream is reopened and the
        unanswered requests are sent again.
        """
        options = codec.EmbedOptions(self._name(model), normalize, truncate, cache=cache)
        unanswered, cond = Window(texts, batch_size, window, options), threading.Condition()
        backoff = self.retry.backoff(self._explain)
        while True:
            try:
                for resp in self._stub.EmbedStream(feed(unanswered, cond)):
                    with cond:
                        block = unanswered.answer(resp)
                        cond.notify_all()
                    yield block
                    backoff.reset()
                if unanswered.drained:
                    return
            except grpc.RpcError as exc:
                time.sleep(backoff.after(exc))

    def submit_job(
        self,
        texts: Sequence[str],
        *,
        model: str | None = None,
        idempotency_key: str = "",
        ttl_seconds: int = 0,
        normalize: bool | None = None,
        truncate: bool | None = None,
        cache: str = "default",
    ) -> JobHandle:
        """Create an async job from texts held in memory (up to the server's inline limit)."""
        request = codec.submit_request(
            self._job_spec(model, idempotency_key, ttl_seconds, normalize, truncate, cache), texts
        )
        return JobHandle(self, self._with_retry(lambda: self._jobs.SubmitJob(request, timeout=self.timeout)))

    def upload_job(
        self,
        texts: Iterable[str],
        *,
        model: str | None = None,
        idempotency_key: str = "",
        ttl_seconds: int = 0,
        normalize: bool | None = None,
        truncate: bool | None = None,
        cache: str = "default",
        chunk_size: int = 1000,
    ) -> JobHandle:
        """Create an async job from any iterable, read lazily and streamed in chunks."""
        spec = self._job_spec(model, idempotency_key, ttl_seconds, normalize, truncate, cache)
        try:
            # Not retried: the upload read ``texts`` once and cannot send them again.
            job = self._jobs.UploadJob(codec.upload_messages(spec, texts, chunk_size), timeout=self._upload_timeout)
        except grpc.RpcError as exc:
            raise self._explain(exc) from None
        return JobHandle(self, job)

    def upload_media_job(
        self,
        clips: Iterable[media.Clip],
        *,
        kind: str = "video",
        model: str | None = None,
        sampling: media.Sampling = media.DEFAULT,
        rate: float = 0.0,
        idempotency_key: str = "",
        ttl_seconds: int = 0,
        normalize: bool | None = None,
    ) -> JobHandle:
        """An async job of clips (long videos, many files), read lazily and uploaded one per chunk;
        its results are (index, :class:`MediaEmbedding`)."""
        spec = self._job_spec(model, idempotency_key, ttl_seconds, normalize, None)
        try:
            # Not retried: the upload read ``clips`` once and cannot send them again.
            job = self._jobs.UploadJob(
                media.upload_messages(spec, clips, kind, sampling, rate), timeout=self._upload_timeout
            )
        except grpc.RpcError as exc:
            raise self._explain(exc) from None
        return JobHandle(self, job)

    def job(self, job_id: str) -> JobHandle:
        """A handle on an existing job (from any client or gateway)."""
        job = self._with_retry(lambda: self._jobs.GetJob(jpb.GetJobRequest(id=job_id), timeout=self.timeout))
        return JobHandle(self, job)

    def rerank(
        self, query: str, documents: Sequence[str], *, model: str | None = None, top_n: int = 0
    ) -> list[tuple[int, float]]:
        """(document index, score) pairs from a rerank model, best first."""
        request = codec.rerank_request(query, documents, self._name(model), top_n)
        response: pb.RerankResponse = self._with_retry(lambda: self._stub.Rerank(request, timeout=self.timeout))
        return codec.ranking(response)

    @property
    def stub(self) -> pb_grpc.EmbedderStub:
        """The generated Embedder stub on this client's channel, for every option of the API."""
        return self._stub

    def list_models(self) -> list[pb.ModelInfo]:
        """The served models."""
        resp = self._with_retry(lambda: self._stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout))
        return list(resp.models)

    def _with_retry(self, call: Callable[[], T]) -> T:
        backoff = self.retry.backoff(self._explain)
        while True:
            try:
                return call()
            except grpc.RpcError as exc:
                time.sleep(backoff.after(exc))


class JobHandle(Handle["Client"]):
    """An async job: its last known state, waiting with progress, results, cancel."""

    def refresh(self) -> jpb.Job:
        """Fetch the current state."""
        request = jpb.GetJobRequest(id=self.id)
        self.job = self.client._with_retry(lambda: self.client._jobs.GetJob(request, timeout=self.client.timeout))
        return self.job

    def wait(self, progress: bool = False, timeout: float | None = None) -> jpb.Job:
        """Block until the job ends, following WatchJob (reconnecting if a gateway goes away)."""
        watch = Watch(self.job, progress, timeout, self.client._explain)
        try:
            while self.job.state not in TERMINAL:
                try:
                    for job in self.client._jobs.WatchJob(jpb.GetJobRequest(id=self.id), timeout=watch.remaining()):
                        self.job = watch.seen(job)
                except grpc.RpcError as exc:
                    time.sleep(watch.broken(exc))
                    self.refresh()
            return self.job
        finally:
            watch.close()

    def results(self, offset: int = 0) -> Iterator[tuple[int, codec.JobEmbedding]]:
        """(index, vector) in input order from ``offset``; resumes by itself after a disconnect.

        A failed input raises ``RuntimeError`` naming its index and cause.
        """
        backoff = self.client.retry.backoff(self.client._explain)
        while True:
            try:
                for result in self.client._jobs.GetJobResults(codec.results_request(self.id, offset)):
                    yield codec.job_result(self.id, result, self.job.dimensions)
                    offset = result.index + 1
                    backoff.reset()
                return
            except grpc.RpcError as exc:
                time.sleep(backoff.after(exc))

    def cancel(self) -> jpb.Job:
        """Stop remaining work; finished results stay readable."""
        request = jpb.GetJobRequest(id=self.id)
        self.job = self.client._with_retry(lambda: self.client._jobs.CancelJob(request, timeout=self.client.timeout))
        return self.job
