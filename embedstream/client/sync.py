"""The blocking client: ``Client`` and its ``JobHandle``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import grpc
import numpy as np

from embedstream.client.channel import CHANNEL_OPTIONS, Bearer, api_key_or_env, channel_target
from embedstream.client.codec import MAX_INPUTS, T, chunks, embed_request, job_spec, ranking, rerank_request, vectors
from embedstream.client.retry import RETRYABLE, Retry, retry_after
from embedstream.client.window import Pending, feed
from embedstream.progress import Progress
from embedstream.tls import TLS
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc
from embedstream.v1 import jobs_pb2 as jpb
from embedstream.v1 import jobs_pb2_grpc as jpb_grpc


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
                channel = grpc.insecure_channel(channel_target(target), options=options)
            else:
                channel = grpc.secure_channel(channel_target(target), tls.credentials(), options=options)
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
    ) -> np.ndarray:
        """Vectors for ``texts`` (str) and images (encoded bytes) as one (n, dimensions) array; any length.

        ``input_type`` ("query"/"document") or ``prompt_name`` pick the model's prompt;
        ``dimensions`` a Matryoshka size it declares. Other output types, sparse and
        multi-vector responses: call :attr:`stub` with an EmbedRequest.
        """
        if isinstance(texts, str | bytes):
            raise TypeError("embed() takes a sequence of texts; wrap a single text in a list")
        name = model if model is not None else self.model
        options = {"input_type": input_type, "prompt_name": prompt_name, "dimensions": dimensions}

        def call(chunk: list[str | bytes]) -> pb.EmbedResponse:
            request = embed_request(chunk, name, normalize, truncate, "", options)
            response: pb.EmbedResponse = self._with_retry(lambda: self._stub.Embed(request, timeout=self.timeout))
            return response

        parts = [call(chunk) for chunk in chunks(texts, MAX_INPUTS)]
        return np.concatenate([vectors(p) for p in parts]) if parts else np.zeros((0, 0), dtype=np.float32)

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
        source = enumerate(chunks(texts, min(batch_size, MAX_INPUTS)))
        pending = Pending(window, source, (name, normalize, truncate))
        delays = self.retry.delays()
        while True:
            try:
                for resp in self._stub.EmbedStream(feed(pending)):
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
            spec=job_spec(
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
        spec = job_spec(model if model is not None else self.model, idempotency_key, ttl_seconds, normalize, truncate)

        def messages() -> Iterator[jpb.UploadJobRequest]:
            yield jpb.UploadJobRequest(header=spec)
            for chunk in chunks(texts, chunk_size):
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
        request = rerank_request(query, documents, model if model is not None else self.model, top_n)
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
