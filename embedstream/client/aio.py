"""The asyncio client: ``AsyncClient`` and its ``AsyncJobHandle``, the twins of the blocking ones."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, Unpack, overload

import grpc

from embedstream.client import codec, media
from embedstream.client.base import BaseClient
from embedstream.client.channel import aio_bearer, api_key_or_env, dial
from embedstream.client.embeddings import Embeddings
from embedstream.client.jobs import TERMINAL, Handle, Watch
from embedstream.client.outputs import Outputs
from embedstream.client.retry import Retry
from embedstream.client.window import Window, afeed
from embedstream.tls import TLS
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc
from embedstream.v1 import jobs_pb2 as jpb
from embedstream.v1 import jobs_pb2_grpc as jpb_grpc


class AsyncClient(BaseClient):
    """The asyncio twin of :class:`Client`: the same methods, options and retries, awaited."""

    def __init__(
        self,
        target: str = "localhost:50051",
        *,
        model: str = "",
        timeout: float = 60.0,
        retry: Retry | None = None,
        channel: grpc.aio.Channel | None = None,
        api_key: str | None = None,
        tls: TLS | None = None,
    ) -> None:
        super().__init__(target, model, timeout, retry, tls)
        key = api_key_or_env(api_key)
        if channel is not None and key:
            # grpc.aio adds interceptors only when it makes a channel.
            raise ValueError("AsyncClient(channel=...) cannot add an API key: build the channel with it, or api_key=''")
        self._channel = channel or dial(grpc.aio, target, tls, interceptors=aio_bearer(key) if key else None)
        self._stub = pb_grpc.EmbedderStub(self._channel)
        self._jobs = jpb_grpc.JobsStub(self._channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

    @overload
    async def embed(
        self, texts: Sequence[str | bytes], *, outputs: None = None, **options: Unpack[codec.EmbedKwargs]
    ) -> Embeddings: ...

    @overload
    async def embed(
        self, texts: Sequence[str | bytes], *, outputs: Sequence[str], **options: Unpack[codec.EmbedKwargs]
    ) -> list[Outputs]: ...

    async def embed(
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
        """Vectors for ``texts`` and images, as :meth:`Client.embed`; chunks of 256 run concurrently."""
        options = codec.EmbedOptions(
            self._name(model), normalize, truncate, input_type, prompt_name, dimensions, cache, outputs
        )

        async def call(request: pb.EmbedRequest) -> pb.EmbedResponse:
            response: pb.EmbedResponse = await self._with_retry(lambda: self._stub.Embed(request, timeout=self.timeout))
            return response

        return codec.gathered(await asyncio.gather(*(call(request) for request in options.requests(texts))), outputs)

    async def embed_media(
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
            resp: pb.EmbedResponse = await self._with_retry(
                functools.partial(self._stub.Embed, request, timeout=self.timeout)
            )
            out.append(media.result(resp.embeddings, resp.dimensions))
        return out

    async def embed_stream(
        self,
        texts: Iterable[str],
        *,
        batch_size: int = 64,
        window: int = 2048,
        model: str | None = None,
        normalize: bool | None = None,
        truncate: bool | None = None,
        cache: str = "default",
    ) -> AsyncIterator[Embeddings]:
        """Yield the embeddings of each ``batch_size`` texts in order, as :meth:`Client.embed_stream` (reconnecting)."""
        options = codec.EmbedOptions(self._name(model), normalize, truncate, cache=cache)
        unanswered, cond = Window(texts, batch_size, window, options), asyncio.Condition()
        backoff = self.retry.backoff(self._explain)
        while True:
            call = self._stub.EmbedStream(afeed(unanswered, cond))
            try:
                async for resp in call:
                    async with cond:
                        block = unanswered.answer(resp)
                        cond.notify_all()
                    yield block
                    backoff.reset()
                if unanswered.drained:
                    return
            except grpc.RpcError as exc:
                await asyncio.sleep(backoff.after(exc))
            finally:
                call.cancel()

    async def submit_job(
        self,
        texts: Sequence[str],
        *,
        model: str | None = None,
        idempotency_key: str = "",
        ttl_seconds: int = 0,
        normalize: bool | None = None,
        truncate: bool | None = None,
        cache: str = "default",
    ) -> AsyncJobHandle:
        """Create an async job from texts held in memory (up to the server's inline limit)."""
        request = codec.submit_request(
            self._job_spec(model, idempotency_key, ttl_seconds, normalize, truncate, cache), texts
        )
        return AsyncJobHandle(self, await self._with_retry(lambda: self._jobs.SubmitJob(request, timeout=self.timeout)))

    async def upload_job(
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
    ) -> AsyncJobHandle:
        """Create an async job from any iterable, read lazily and streamed in chunks."""
        spec = self._job_spec(model, idempotency_key, ttl_seconds, normalize, truncate, cache)
        try:
            # Not retried: the upload read ``texts`` once and cannot send them again.
            job = await self._jobs.UploadJob(
                codec.upload_messages(spec, texts, chunk_size), timeout=self._upload_timeout
            )
        except grpc.RpcError as exc:
            raise self._explain(exc) from None
        return AsyncJobHandle(self, job)

    async def upload_media_job(
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
    ) -> AsyncJobHandle:
        """An async job of clips (long videos, many files), read lazily and uploaded one per chunk;
        its results are (index, :class:`MediaEmbedding`)."""
        spec = self._job_spec(model, idempotency_key, ttl_seconds, normalize, None)
        try:
            # Not retried: the upload read ``clips`` once and cannot send them again.
            job = await self._jobs.UploadJob(
                media.upload_messages(spec, clips, kind, sampling, rate), timeout=self._upload_timeout
            )
        except grpc.RpcError as exc:
            raise self._explain(exc) from None
        return AsyncJobHandle(self, job)

    async def job(self, job_id: str) -> AsyncJobHandle:
        """A handle on an existing job (from any client or gateway)."""
        job = await self._with_retry(lambda: self._jobs.GetJob(jpb.GetJobRequest(id=job_id), timeout=self.timeout))
        return AsyncJobHandle(self, job)

    async def rerank(
        self, query: str, documents: Sequence[str], *, model: str | None = None, top_n: int = 0
    ) -> list[tuple[int, float]]:
        """(document index, score) pairs from a rerank model, best first."""
        request = codec.rerank_request(query, documents, self._name(model), top_n)
        return codec.ranking(await self._with_retry(lambda: self._stub.Rerank(request, timeout=self.timeout)))

    @property
    def stub(self) -> pb_grpc.EmbedderStub:
        """The generated Embedder stub on this client's asyncio channel (its calls are awaited)."""
        return self._stub

    async def list_models(self) -> list[pb.ModelInfo]:
        """The served models."""
        resp = await self._with_retry(lambda: self._stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout))
        return list(resp.models)

    async def _with_retry(self, call: Callable[[], Awaitable[Any]]) -> Any:
        backoff = self.retry.backoff(self._explain)
        while True:
            try:
                return await call()
            except grpc.RpcError as exc:
                await asyncio.sleep(backoff.after(exc))


class AsyncJobHandle(Handle["AsyncClient"]):
    """The asyncio twin of :class:`JobHandle`."""

    async def refresh(self) -> jpb.Job:
        """Fetch the current state."""
        request = jpb.GetJobRequest(id=self.id)
        self.job = await self.client._with_retry(lambda: self.client._jobs.GetJob(request, timeout=self.client.timeout))
        return self.job

    async def wait(self, progress: bool = False, timeout: float | None = None) -> jpb.Job:
        """Wait until the job ends, following WatchJob (reconnecting if a gateway goes away)."""
        watch = Watch(self.job, progress, timeout, self.client._explain)
        try:
            while self.job.state not in TERMINAL:
                try:
                    async for job in self.client._jobs.WatchJob(
                        jpb.GetJobRequest(id=self.id), timeout=watch.remaining()
                    ):
                        self.job = watch.seen(job)
                except grpc.RpcError as exc:
                    await asyncio.sleep(watch.broken(exc))
                    await self.refresh()
            return self.job
        finally:
            watch.close()

    async def results(self, offset: int = 0) -> AsyncIterator[tuple[int, codec.JobEmbedding]]:
        """(index, vector) in input order from ``offset``; resumes by itself after a disconnect.

        A failed input raises ``RuntimeError`` naming its index and cause.
        """
        backoff = self.client.retry.backoff(self.client._explain)
        while True:
            try:
                async for result in self.client._jobs.GetJobResults(codec.results_request(self.id, offset)):
                    yield codec.job_result(self.id, result, self.job.dimensions)
                    offset = result.index + 1
                    backoff.reset()
                return
            except grpc.RpcError as exc:
                await asyncio.sleep(backoff.after(exc))

    async def cancel(self) -> jpb.Job:
        """Stop remaining work; finished results stay readable."""
        request = jpb.GetJobRequest(id=self.id)
        self.job = await self.client._with_retry(
            lambda: self.client._jobs.CancelJob(request, timeout=self.client.timeout)
        )
        return self.job
