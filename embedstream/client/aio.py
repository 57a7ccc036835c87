"""The asyncio client: ``AsyncClient`` and its ``AsyncJobHandle``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import grpc
import numpy as np

from embedstream.client.channel import CHANNEL_OPTIONS, aio_bearer, api_key_or_env, channel_target
from embedstream.client.codec import MAX_INPUTS, chunks, embed_request, job_spec, ranking, rerank_request, vectors
from embedstream.client.retry import RETRYABLE, Retry, retry_after
from embedstream.progress import Progress
from embedstream.tls import TLS
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc
from embedstream.v1 import jobs_pb2 as jpb
from embedstream.v1 import jobs_pb2_grpc as jpb_grpc


class AsyncClient:
    """The asyncio twin of :class:`Client`."""

    def __init__(
        self,
        target: str = "localhost:50051",
        *,
        model: str = "",
        timeout: float = 60.0,
        retry: Retry | None = None,
        api_key: str | None = None,
        tls: TLS | None = None,
    ) -> None:
        self.model = model
        self.timeout = timeout
        self.retry = retry or Retry()
        key = api_key_or_env(api_key)
        interceptors = aio_bearer(key) if key else None
        options = CHANNEL_OPTIONS + (tls.options() if tls else [])
        if tls is None:
            self._channel = grpc.aio.insecure_channel(
                channel_target(target), options=options, interceptors=interceptors
            )
        else:
            self._channel = grpc.aio.secure_channel(
                channel_target(target), tls.credentials(), options=options, interceptors=interceptors
            )
        self._stub = pb_grpc.EmbedderStub(self._channel)
        self._jobs = jpb_grpc.JobsStub(self._channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()

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
    ) -> np.ndarray:
        """Vectors for ``texts`` and images, as :meth:`Client.embed`; chunks of 256 run concurrently."""
        if isinstance(texts, str | bytes):
            raise TypeError("embed() takes a sequence of texts; wrap a single text in a list")
        name = model if model is not None else self.model
        options = {"input_type": input_type, "prompt_name": prompt_name, "dimensions": dimensions}

        async def call(chunk: list[str | bytes]) -> pb.EmbedResponse:
            request = embed_request(chunk, name, normalize, truncate, "", options)
            response: pb.EmbedResponse = await self._with_retry(lambda: self._stub.Embed(request, timeout=self.timeout))
            return response

        parts = await asyncio.gather(*(call(chunk) for chunk in chunks(texts, MAX_INPUTS)))
        return np.concatenate([vectors(p) for p in parts]) if parts else np.zeros((0, 0), dtype=np.float32)

    async def embed_stream(
        self, texts: Iterable[str], *, batch_size: int = 64, window: int = 2048, model: str | None = None
    ) -> AsyncIterator[np.ndarray]:
        """Yield one array per ``batch_size`` texts, in order; at most ``window`` texts in flight."""
        name = model if model is not None else self.model
        credit = asyncio.Semaphore(max(1, window // max(1, batch_size)))

        async def requests() -> AsyncIterator[pb.EmbedRequest]:
            for k, chunk in enumerate(chunks(texts, min(batch_size, MAX_INPUTS))):
                await credit.acquire()
                yield embed_request(chunk, name, None, None, str(k))

        call = self._stub.EmbedStream(requests())
        async for resp in call:
            credit.release()
            yield vectors(resp)

    async def submit_job(
        self, texts: Sequence[str], *, model: str | None = None, idempotency_key: str = "", ttl_seconds: int = 0
    ) -> AsyncJobHandle:
        """Create an async job from texts held in memory."""
        spec = job_spec(model if model is not None else self.model, idempotency_key, ttl_seconds, None, None)
        request = jpb.SubmitJobRequest(spec=spec, inputs=[pb.Input(text=t) for t in texts])
        job = await self._with_retry(lambda: self._jobs.SubmitJob(request, timeout=self.timeout))
        return AsyncJobHandle(self, job)

    async def upload_job(
        self,
        texts: Iterable[str],
        *,
        model: str | None = None,
        idempotency_key: str = "",
        ttl_seconds: int = 0,
        chunk_size: int = 1000,
    ) -> AsyncJobHandle:
        """Create an async job from any iterable, streamed in chunks."""
        spec = job_spec(model if model is not None else self.model, idempotency_key, ttl_seconds, None, None)

        async def messages() -> AsyncIterator[jpb.UploadJobRequest]:
            yield jpb.UploadJobRequest(header=spec)
            for chunk in chunks(texts, chunk_size):
                yield jpb.UploadJobRequest(chunk=jpb.InputChunk(inputs=[pb.Input(text=t) for t in chunk]))

        job = await self._jobs.UploadJob(messages(), timeout=max(self.timeout, 3600))
        return AsyncJobHandle(self, job)

    async def job(self, job_id: str) -> AsyncJobHandle:
        """A handle on an existing job."""
        job = await self._with_retry(lambda: self._jobs.GetJob(jpb.GetJobRequest(id=job_id), timeout=self.timeout))
        return AsyncJobHandle(self, job)

    async def rerank(
        self, query: str, documents: Sequence[str], *, model: str | None = None, top_n: int = 0
    ) -> list[tuple[int, float]]:
        """(document index, score) pairs from a rerank model, best first."""
        request = rerank_request(query, documents, model if model is not None else self.model, top_n)
        response = await self._with_retry(lambda: self._stub.Rerank(request, timeout=self.timeout))
        return ranking(response)

    async def list_models(self) -> list[pb.ModelInfo]:
        """The served models."""
        resp = await self._with_retry(lambda: self._stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout))
        return list(resp.models)

    async def _with_retry(self, call: Callable[[], Any]) -> Any:
        delays = self.retry.delays()
        while True:
            try:
                return await call()
            except grpc.aio.AioRpcError as exc:
                delay = next(delays, None) if exc.code() in RETRYABLE else None
                if delay is None:
                    raise
                await asyncio.sleep(max(delay, retry_after(exc)))


class AsyncJobHandle:
    """The asyncio twin of :class:`JobHandle`."""

    def __init__(self, client: AsyncClient, job: jpb.Job) -> None:
        self.client = client
        self.job = job

    @property
    def id(self) -> str:
        """The job id."""
        return self.job.id

    async def wait(self, progress: bool = False) -> jpb.Job:
        """Follow WatchJob until the job ends."""
        bar = Progress(self.job.inputs_total or None, f"job {self.id[:8]}", enabled=progress)
        try:
            async for job in self.client._jobs.WatchJob(jpb.GetJobRequest(id=self.id)):
                self.job = job
                bar.update(job.inputs_done + job.inputs_failed, job.inputs_total or None)
            return self.job
        finally:
            bar.close()

    async def results(self, offset: int = 0) -> AsyncIterator[tuple[int, np.ndarray]]:
        """(index, vector) in input order from ``offset``."""
        request = jpb.GetJobResultsRequest(id=self.id, offset=offset, encoding=pb.VECTOR_ENCODING_PACKED_F32LE)
        async for result in self.client._jobs.GetJobResults(request):
            if result.error:
                raise RuntimeError(f"job {self.id} input {result.index} failed: {result.error}")
            yield result.index, np.frombuffer(result.embedding.packed, dtype="<f4")

    async def cancel(self) -> jpb.Job:
        """Stop remaining work."""
        request = jpb.GetJobRequest(id=self.id)
        self.job = await self.client._with_retry(
            lambda: self.client._jobs.CancelJob(request, timeout=self.client.timeout)
        )
        return self.job
