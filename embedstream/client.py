"""Python client SDK: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

Importable without torch: it needs grpcio and numpy only. Vectors come back as
float32 numpy arrays in input order. ``api_key`` (default: ``EMBEDSTREAM_API_KEY``)
is sent as ``authorization: Bearer <key>`` on every call; ``tls=TLS(...)``
speaks TLS, with a client certificate for gateways that require one. Calls retry ``UNAVAILABLE`` and
``RESOURCE_EXHAUSTED`` with capped exponential backoff and jitter, waiting at least
as long as a rate-limited call's ``retry-after-ms`` says; a stream that
breaks is reopened and re-sends only the requests not yet answered.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import grpc
import numpy as np

from embedstream import outputs as named
from embedstream.outputs import Outputs
from embedstream.progress import Progress
from embedstream.tls import TLS
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc
from embedstream.v1 import jobs_pb2 as jpb
from embedstream.v1 import jobs_pb2_grpc as jpb_grpc

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
MAX_INPUTS = 256
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Retry:
    """How often and how patiently to retry UNAVAILABLE / RESOURCE_EXHAUSTED."""

    attempts: int = 6
    initial_s: float = 0.05
    max_s: float = 2.0

    def delays(self) -> Iterator[float]:
        """Backoff before each retry: exponential, capped, with full jitter."""
        for n in range(self.attempts - 1):
            yield random.uniform(0, min(self.max_s, self.initial_s * 2**n))


#: What ``input_type=`` takes in :meth:`Client.embed`.
INPUT_TYPES = {"": pb.INPUT_TYPE_UNSPECIFIED, "query": pb.INPUT_TYPE_QUERY, "document": pb.INPUT_TYPE_DOCUMENT}


def _request(
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
    if opts.get("outputs") is not None:
        req.outputs.extend(named.kinds(opts["outputs"]))
    return req


def _rerank_request(query: str, documents: Sequence[str], model: str, top_n: int) -> pb.RerankRequest:
    return pb.RerankRequest(model=model, query=query, documents=list(documents), top_n=top_n)


def ranking(resp: pb.RerankResponse) -> list[tuple[int, float]]:
    """(document index, score) pairs, best first."""
    return [(r.index, r.score) for r in resp.results]


def _job_spec(model: str, key: str, ttl: int, normalize: bool | None, truncate: bool | None) -> jpb.JobSpec:
    """The JobSpec both clients send; unset options stay unset (the model's defaults)."""
    spec = jpb.JobSpec(model=model, idempotency_key=key, ttl_seconds=ttl)
    if normalize is not None:
        spec.normalize = normalize
    if truncate is not None:
        spec.truncate = truncate
    return spec


def retry_after(exc: grpc.RpcError) -> float:
    """The gateway's retry hint in seconds (trailing ``retry-after-ms`` of a rate-limited call), or 0."""
    for key, value in exc.trailing_metadata() or ():
        if key == "retry-after-ms" and str(value).isdigit():
            return int(value) / 1000
    return 0.0


def vectors(resp: pb.EmbedResponse) -> np.ndarray:
    """The response's vectors as a (n, dimensions) float32 array."""
    if resp.embeddings and resp.embeddings[0].packed:
        raw = b"".join(e.packed for e in resp.embeddings)
        return np.frombuffer(raw, dtype="<f4").reshape(len(resp.embeddings), resp.dimensions).astype(np.float32)
    return np.array([list(e.values) for e in resp.embeddings], dtype=np.float32).reshape(-1, resp.dimensions)


def _gathered(parts: list[pb.EmbedResponse], outputs: Sequence[str] | None) -> np.ndarray | list[Outputs]:
    """The responses of one embed() call: one array, or one Outputs per input when ``outputs`` was asked."""
    if outputs is not None:
        return [o for p in parts for o in named.of(p, outputs)]
    return np.concatenate([vectors(p) for p in parts]) if parts else np.zeros((0, 0), dtype=np.float32)


def _chunks(texts: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(texts)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


class Client:
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
        self.model = model
        self.timeout = timeout
        self.retry = retry or Retry()
        if channel is None:
            options = CHANNEL_OPTIONS + (tls.options() if tls else [])
            if tls is None:
                channel = grpc.insecure_channel(_target(target), options=options)
            else:
                channel = grpc.secure_channel(_target(target), tls.credentials(), options=options)
        key = _api_key(api_key)
        self._channel = grpc.intercept_channel(channel, _Bearer(key)) if key else channel
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
        self,
        texts: Sequence[str | bytes],
        *,
        model: str | None = None,
        normalize: bool | None = None,
        truncate: bool | None = None,
        input_type: str = "",
        prompt_name: str = "",
        dimensions: int | None = None,
        outputs: None = None,
    ) -> np.ndarray: ...

    @overload
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
        outputs: Sequence[str],
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
        outputs: Sequence[str] | None = None,
    ) -> np.ndarray | list[Outputs]:
        """Vectors for ``texts`` (str) and images (encoded bytes) as one (n, dimensions) array; any length.

        ``input_type`` ("query"/"document") or ``prompt_name`` pick the model's prompt;
        ``dimensions`` a Matryoshka size it declares. ``outputs`` (some of "dense", "sparse",
        "multi-vector", as the model offers) returns one :class:`Outputs` per input instead.
        Other output types: call :attr:`stub` with an EmbedRequest.
        """
        if isinstance(texts, str | bytes):
            raise TypeError("embed() takes a sequence of texts; wrap a single text in a list")
        name = model if model is not None else self.model
        options = {"input_type": input_type, "prompt_name": prompt_name, "dimensions": dimensions, "outputs": outputs}

        def call(chunk: list[str | bytes]) -> pb.EmbedResponse:
            request = _request(chunk, name, normalize, truncate, "", options)
            response: pb.EmbedResponse = self._with_retry(lambda: self._stub.Embed(request, timeout=self.timeout))
            return response

        parts = [call(chunk) for chunk in _chunks(texts, MAX_INPUTS)]
        return _gathered(parts, outputs)

    def embed_stream(
        self,
        texts: Iterable[str],
        *,
        batch_size: int = 64,
        window: int = 2048,
        model: str | None = None,
        normalize: bool | None = None,
        truncate: bool | None = None,
    ) -> Iterator[np.ndarray]:
        """Yield one array per ``batch_size`` texts, in order, reading ``texts`` lazily.

        At most ``window`` texts are sent and unanswered at any time, so memory
        stays bounded for any corpus size. A broken stream is reopened and the
        unanswered requests are sent again.
        """
        name = model if model is not None else self.model
        source = enumerate(_chunks(texts, min(batch_size, MAX_INPUTS)))
        pending = _Pending(window, source, (name, normalize, truncate))
        delays = self.retry.delays()
        while True:
            try:
                for resp in self._stub.EmbedStream(_feed(pending)):
                    k, _ = pending.pop()
                    if resp.request_id != str(k):
                        raise RuntimeError(f"stream answered {resp.request_id!r} where {k} was due")
                    yield vectors(resp)
                    delays = self.retry.delays()
                if not pending.items:
                    return
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE:
                    raise
                delay = next(delays, None)
                if delay is None:
                    raise
                time.sleep(max(delay, retry_after(exc)))

    def submit_job(
        self,
        texts: Sequence[str],
        *,
        model: str | None = None,
        idempotency_key: str = "",
        ttl_seconds: int = 0,
        normalize: bool | None = None,
        truncate: bool | None = None,
    ) -> JobHandle:
        """Create an async job from texts held in memory (up to the server's inline limit)."""
        request = jpb.SubmitJobRequest(
            spec=_job_spec(
                model if model is not None else self.model, idempotency_key, ttl_seconds, normalize, truncate
            ),
            inputs=[pb.Input(text=t) for t in texts],
        )
        job = self._with_retry(lambda: self._jobs.SubmitJob(request, timeout=self.timeout))
        return JobHandle(self, job)

    def upload_job(
        self,
        texts: Iterable[str],
        *,
        model: str | None = None,
        idempotency_key: str = "",
        ttl_seconds: int = 0,
        normalize: bool | None = None,
        truncate: bool | None = None,
        chunk_size: int = 1000,
    ) -> JobHandle:
        """Create an async job from any iterable, read lazily and streamed in chunks."""
        spec = _job_spec(model if model is not None else self.model, idempotency_key, ttl_seconds, normalize, truncate)

        def messages() -> Iterator[jpb.UploadJobRequest]:
            yield jpb.UploadJobRequest(header=spec)
            for chunk in _chunks(texts, chunk_size):
                yield jpb.UploadJobRequest(chunk=jpb.InputChunk(inputs=[pb.Input(text=t) for t in chunk]))

        job = self._jobs.UploadJob(messages(), timeout=max(self.timeout, 3600))
        return JobHandle(self, job)

    def job(self, job_id: str) -> JobHandle:
        """A handle on an existing job (from any client or gateway)."""
        job = self._with_retry(lambda: self._jobs.GetJob(jpb.GetJobRequest(id=job_id), timeout=self.timeout))
        return JobHandle(self, job)

    def rerank(
        self, query: str, documents: Sequence[str], *, model: str | None = None, top_n: int = 0
    ) -> list[tuple[int, float]]:
        """(document index, score) pairs from a rerank model, best first."""
        request = _rerank_request(query, documents, model if model is not None else self.model, top_n)
        response: pb.RerankResponse = self._with_retry(lambda: self._stub.Rerank(request, timeout=self.timeout))
        return ranking(response)

    @property
    def stub(self) -> pb_grpc.EmbedderStub:
        """The generated Embedder stub on this client's channel, for every option of the API."""
        return self._stub

    def list_models(self) -> list[pb.ModelInfo]:
        """The served models."""
        resp = self._with_retry(lambda: self._stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout))
        return list(resp.models)

    def _with_retry(self, call: Callable[[], T]) -> T:
        delays = self.retry.delays()
        while True:
            try:
                return call()
            except grpc.RpcError as exc:
                delay = next(delays, None) if exc.code() in RETRYABLE else None
                if delay is None:
                    raise
                time.sleep(max(delay, retry_after(exc)))


class JobHandle:
    """An async job: its last known state, waiting with progress, results, cancel."""

    TERMINAL = (jpb.JOB_STATE_SUCCEEDED, jpb.JOB_STATE_FAILED, jpb.JOB_STATE_CANCELLED)

    def __init__(self, client: Client, job: jpb.Job) -> None:
        self.client = client
        self.job = job

    @property
    def id(self) -> str:
        """The job id; any gateway answers for it until the job expires."""
        return self.job.id

    def refresh(self) -> jpb.Job:
        """Fetch the current state."""
        request = jpb.GetJobRequest(id=self.id)
        self.job = self.client._with_retry(lambda: self.client._jobs.GetJob(request, timeout=self.client.timeout))
        return self.job

    def wait(self, progress: bool = False, timeout: float | None = None) -> jpb.Job:
        """Block until the job ends, following WatchJob (reconnecting if a gateway goes away)."""
        bar = Progress(self.job.inputs_total or None, f"job {self.id[:8]}", enabled=progress)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while self.job.state not in self.TERMINAL:
                remaining = None if deadline is None else max(0.1, deadline - time.monotonic())
                try:
                    for job in self.client._jobs.WatchJob(jpb.GetJobRequest(id=self.id), timeout=remaining):
                        self.job = job
                        bar.update(job.inputs_done + job.inputs_failed, job.inputs_total or None)
                except grpc.RpcError as exc:
                    if exc.code() not in RETRYABLE:
                        raise
                    time.sleep(0.2)
                    self.refresh()
            return self.job
        finally:
            bar.close()

    def results(self, offset: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """(index, vector) in input order from ``offset``; resumes by itself after a disconnect.

        A failed input raises ``RuntimeError`` naming its index and cause.
        """
        delays = self.client.retry.delays()
        while True:
            request = jpb.GetJobResultsRequest(id=self.id, offset=offset, encoding=pb.VECTOR_ENCODING_PACKED_F32LE)
            try:
                for result in self.client._jobs.GetJobResults(request):
                    if result.error:
                        raise RuntimeError(f"job {self.id} input {result.index} failed: {result.error}")
                    yield result.index, np.frombuffer(result.embedding.packed, dtype="<f4")
                    offset = result.index + 1
                    delays = self.client.retry.delays()
                return
            except grpc.RpcError as exc:
                delay = next(delays, None) if exc.code() in RETRYABLE else None
                if delay is None:
                    raise
                time.sleep(max(delay, retry_after(exc)))

    def cancel(self) -> jpb.Job:
        """Stop remaining work; finished results stay readable."""
        request = jpb.GetJobRequest(id=self.id)
        self.job = self.client._with_retry(lambda: self.client._jobs.CancelJob(request, timeout=self.client.timeout))
        return self.job


class _Pending:
    """Requests sent on a stream and not yet answered.

    gRPC pulls requests on its own thread while the caller consumes answers, and
    a broken stream's sender may still be pulling when the next attempt starts:
    pulling from the source, recording the request and switching attempts all
    happen under one lock, so no chunk is taken by a dead attempt and lost.
    """

    def __init__(
        self, window: int, source: Iterator[tuple[int, list[str]]], args: tuple[str, bool | None, bool | None]
    ):
        self.window = window
        self.items: collections.deque[tuple[int, pb.EmbedRequest]] = collections.deque()
        self.texts = 0
        self.attempt = 0
        self._source = source
        self._args = args
        self._cond = threading.Condition()

    def restart(self) -> tuple[int, list[pb.EmbedRequest]]:
        """Begin a new attempt; returns its number and the requests to send again."""
        with self._cond:
            self.attempt += 1
            self._cond.notify_all()
            return self.attempt, [req for _, req in self.items]

    def pull(self, attempt: int) -> pb.EmbedRequest | None:
        """The next new request for ``attempt``, once the window has room; None when done."""
        with self._cond:
            self._cond.wait_for(lambda: self.attempt != attempt or self.texts < self.window)
            if self.attempt != attempt:
                return None
            item = next(self._source, None)
            if item is None:
                return None
            k, chunk = item
            req = _request(chunk, *self._args, rid=str(k))
            self.items.append((k, req))
            self.texts += len(chunk)
            return req

    def pop(self) -> tuple[int, pb.EmbedRequest]:
        """Mark the oldest request answered."""
        with self._cond:
            k, req = self.items.popleft()
            self.texts -= len(req.inputs)
            self._cond.notify_all()
            return k, req


def _feed(pending: _Pending) -> Iterator[pb.EmbedRequest]:
    """One stream attempt's requests: the unanswered ones again, then new ones."""
    attempt, resend = pending.restart()
    yield from resend
    while (req := pending.pull(attempt)) is not None:
        yield req


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
        key = _api_key(api_key)
        interceptors = _aio_bearer(key) if key else None
        options = CHANNEL_OPTIONS + (tls.options() if tls else [])
        if tls is None:
            self._channel = grpc.aio.insecure_channel(_target(target), options=options, interceptors=interceptors)
        else:
            self._channel = grpc.aio.secure_channel(
                _target(target), tls.credentials(), options=options, interceptors=interceptors
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

    @overload
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
        outputs: None = None,
    ) -> np.ndarray: ...

    @overload
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
        outputs: Sequence[str],
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
        outputs: Sequence[str] | None = None,
    ) -> np.ndarray | list[Outputs]:
        """Vectors for ``texts`` and images, as :meth:`Client.embed`; chunks of 256 run concurrently."""
        if isinstance(texts, str | bytes):
            raise TypeError("embed() takes a sequence of texts; wrap a single text in a list")
        name = model if model is not None else self.model
        options = {"input_type": input_type, "prompt_name": prompt_name, "dimensions": dimensions, "outputs": outputs}

        async def call(chunk: list[str | bytes]) -> pb.EmbedResponse:
            request = _request(chunk, name, normalize, truncate, "", options)
            response: pb.EmbedResponse = await self._with_retry(lambda: self._stub.Embed(request, timeout=self.timeout))
            return response

        parts = await asyncio.gather(*(call(chunk) for chunk in _chunks(texts, MAX_INPUTS)))
        return _gathered(list(parts), outputs)

    async def embed_stream(
        self, texts: Iterable[str], *, batch_size: int = 64, window: int = 2048, model: str | None = None
    ) -> AsyncIterator[np.ndarray]:
        """Yield one array per ``batch_size`` texts, in order; at most ``window`` texts in flight."""
        name = model if model is not None else self.model
        credit = asyncio.Semaphore(max(1, window // max(1, batch_size)))

        async def requests() -> AsyncIterator[pb.EmbedRequest]:
            for k, chunk in enumerate(_chunks(texts, min(batch_size, MAX_INPUTS))):
                await credit.acquire()
                yield _request(chunk, name, None, None, str(k))

        call = self._stub.EmbedStream(requests())
        async for resp in call:
            credit.release()
            yield vectors(resp)

    async def submit_job(
        self, texts: Sequence[str], *, model: str | None = None, idempotency_key: str = "", ttl_seconds: int = 0
    ) -> AsyncJobHandle:
        """Create an async job from texts held in memory."""
        spec = _job_spec(model if model is not None else self.model, idempotency_key, ttl_seconds, None, None)
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
        spec = _job_spec(model if model is not None else self.model, idempotency_key, ttl_seconds, None, None)

        async def messages() -> AsyncIterator[jpb.UploadJobRequest]:
            yield jpb.UploadJobRequest(header=spec)
            for chunk in _chunks(texts, chunk_size):
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
        request = _rerank_request(query, documents, model if model is not None else self.model, top_n)
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


#: Channel options of every client: exported so that code building its own channel (other
#: stubs, tests) spreads and drains calls the same way.
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # round_robin over every gateway address, skipping a gateway whose gRPC health (service
    # "") is not SERVING: one draining after SIGTERM, or one that lost Redis, gets no new
    # calls while it says so, instead of calls racing its shutdown.
    (
        "grpc.service_config",
        json.dumps({"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}}),
    ),
    # A gateway host that vanishes (power, network) sends no FIN: pings find it within
    # ~15 s, its calls fail UNAVAILABLE (retried on another gateway) and round_robin drops it.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


def _api_key(api_key: str | None) -> str:
    """The key to send: the argument, else ``EMBEDSTREAM_API_KEY``; empty sends none."""
    return os.environ.get("EMBEDSTREAM_API_KEY", "") if api_key is None else api_key


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,  # type: ignore[misc]
):
    pass


class _Bearer(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds ``authorization: Bearer <key>`` to every call of a blocking channel."""

    def __init__(self, key: str) -> None:
        self.header = ("authorization", f"Bearer {key}")

    def _details(self, details: Any) -> _CallDetails:
        metadata = [*(details.metadata or ()), self.header]
        return _CallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready, details.compression
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)

    intercept_unary_stream = intercept_unary_unary
    intercept_stream_stream = intercept_stream_unary


def _aio_bearer(key: str) -> list[Any]:
    """Interceptors adding ``authorization: Bearer <key>`` to every call of an asyncio channel
    (grpc.aio wants one object per kind of call)."""
    header = ("authorization", f"Bearer {key}")

    def details(d: Any) -> Any:
        return d._replace(metadata=grpc.aio.Metadata(*(d.metadata or ()), header))

    class UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
        async def intercept_unary_unary(self, continuation: Any, d: Any, request: Any) -> Any:
            return await continuation(details(d), request)

    class UnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
        async def intercept_unary_stream(self, continuation: Any, d: Any, request: Any) -> Any:
            return await continuation(details(d), request)

    class StreamUnary(grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
        async def intercept_stream_unary(self, continuation: Any, d: Any, requests: Any) -> Any:
            return await continuation(details(d), requests)

    class StreamStream(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
        async def intercept_stream_stream(self, continuation: Any, d: Any, requests: Any) -> Any:
            return await continuation(details(d), requests)

    return [UnaryUnary(), UnaryStream(), StreamUnary(), StreamStream()]


def _target(target: str) -> str:
    # Several addresses become one round-robin channel over all gateways.
    if "," in target:
        return "ipv4:" + target if not target.startswith(("ipv4:", "ipv6:", "dns:")) else target
    return target


__all__ = ["TLS", "AsyncClient", "AsyncJobHandle", "Client", "JobHandle", "Outputs", "Retry", "vectors"]
