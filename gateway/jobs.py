"""The ``embedstream.v1.Jobs`` service: async jobs that any gateway can answer for.

Everything about a job lives in Redis (``embedstream.jobstore``); this process
holds nothing a restart would lose. Uploads stream straight into the model's
bulk stream in chunks, so a gateway never buffers a corpus. A job belongs to
the tenant that made it: for any other tenant it does not exist (NOT_FOUND,
word for word as for an unknown id).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from embedstream.gateway.auth import DEFAULT_TENANT, current_tenant
from embedstream.gateway.directory import Directory
from embedstream.gateway.dispatch import Options
from embedstream.gateway.shape import embeddings
from embedstream.gateway.status import streaming, unary
from embedstream.gateway.validation import check_options, validate_inputs, verify_images

from embedstream import jobstore, keys, tracing, wire
from embedstream.connections import TRANSIENT, replicated
from embedstream.errors import InternalError, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from embedstream.registry import ModelSpec, Registry
from embedstream.settings import Settings
from embedstream.v1 import jobs_pb2 as pb
from embedstream.v1 import jobs_pb2_grpc as pb_grpc

POLL_S = 0.2


class Jobs(pb_grpc.JobsServicer):
    """Create, inspect, follow, read and cancel jobs."""

    def __init__(self, settings: Settings, registry: Registry, directory: Directory, redis: Any) -> None:
        self.settings = settings
        self.registry = registry
        self.directory = directory
        self.redis = redis
        self.store = jobstore.JobStore(redis)

    # -- creating ----------------------------------------------------------

    @unary("SubmitJob")
    async def SubmitJob(self, request: pb.SubmitJobRequest, context: grpc.aio.ServicerContext) -> pb.Job:
        n = len(request.inputs)
        if n == 0:
            raise InvalidArgument("inputs: at least one input is required")
        if n > self.settings.max_job_inline_inputs:
            raise InvalidArgument(
                f"inputs: {n} inputs exceed the {self.settings.max_job_inline_inputs} a SubmitJob takes inline; "
                "use UploadJob"
            )
        model, options = self._check_spec(request.spec)
        tracing.annotate({"embedstream.model": model.name, "embedstream.inputs": n})
        inputs = validate_inputs(request.inputs, model, self.settings, self.directory, options.truncate)
        await verify_images(inputs, self.settings)
        await self._room_for(model, -(-n // jobstore.CHUNK))
        job_id, expires = await self._create(request.spec, model)
        tracing.annotate({"embedstream.job_id": job_id})
        if expires is not None:
            await self._enqueue(job_id, model, options, inputs, 0, expires)
            await self._redis(self.store.complete(job_id, n))
        await self._replicated()  # also for an existing job: a retry must not confirm what a failover could lose
        return await self._job(job_id)

    @unary("UploadJob")
    async def UploadJob(
        self, request_iterator: AsyncIterator[pb.UploadJobRequest], context: grpc.aio.ServicerContext
    ) -> pb.Job:
        stream = request_iterator.__aiter__()
        try:
            first = await stream.__anext__()
        except StopAsyncIteration:
            raise InvalidArgument("header: an upload starts with a header message") from None
        if first.WhichOneof("part") != "header":
            raise InvalidArgument("header: an upload starts with a header message")
        spec = first.header
        model, options = self._check_spec(spec)
        await self._room_for(model, 1)
        job_id, expires = await self._create(spec, model)
        tracing.annotate({"embedstream.model": model.name, "embedstream.job_id": job_id})
        if expires is None:
            async for _ in stream:  # the job exists: read and drop the repeated upload
                pass
            await self._replicated()
            return await self._job(job_id)
        total = 0
        buffered: list[str | bytes] = []
        try:
            async for message in stream:
                if message.WhichOneof("part") != "chunk":
                    raise InvalidArgument(f"chunk after input {total}: only one header is allowed")
                items = validate_inputs(
                    message.chunk.inputs, model, self.settings, self.directory, options.truncate, start=total
                )
                await verify_images(items, self.settings, start=total)
                total += len(items)
                if total > self.settings.max_job_inputs:
                    raise InvalidArgument(f"inputs: a job takes at most {self.settings.max_job_inputs} inputs")
                buffered.extend(items)
                whole = len(buffered) // jobstore.CHUNK * jobstore.CHUNK
                if whole:
                    chunk_index = (total - len(buffered)) // jobstore.CHUNK
                    await self._enqueue(job_id, model, options, buffered[:whole], chunk_index, expires)
                    del buffered[:whole]
            if total == 0:
                raise InvalidArgument("inputs: the upload held no inputs")
            if buffered:
                chunk_index = (total - len(buffered)) // jobstore.CHUNK
                await self._enqueue(job_id, model, options, buffered, chunk_index, expires)
            tracing.annotate({"embedstream.inputs": total})
            await self._redis(self.store.complete(job_id, total))
            await self._replicated()
        except BaseException:
            # An unfinished upload is no job: forget it; workers drop its chunks.
            await self._forget(job_id, spec)
            raise
        return await self._job(job_id)

    async def _replicated(self) -> None:
        """With ``redis_min_replicas`` set, answer "accepted" only once that many replicas
        hold everything written so far, so a failover to one of them keeps the job."""
        wanted = self.settings.redis_min_replicas
        if wanted and not await replicated(self.redis, wanted, self.settings.redis_timeout_s):
            raise Unavailable(
                f"the job was written but fewer than {wanted} Redis replicas confirmed it in "
                f"{self.settings.redis_timeout_s} s; retry with the same idempotency key"
            )

    def _check_spec(self, spec: pb.JobSpec) -> tuple[ModelSpec, Options]:
        model = self.registry.resolve(spec.model)
        if model.family == "rerank":
            raise InvalidArgument(f"spec.model: {model.name!r} is a rerank model; call Rerank or RerankStream")
        if spec.ttl_seconds > self.settings.max_job_ttl_s:
            raise InvalidArgument(
                f"spec.ttl_seconds: {spec.ttl_seconds} exceeds the limit of {self.settings.max_job_ttl_s}"
            )
        if len(spec.idempotency_key) > 256:
            raise InvalidArgument("spec.idempotency_key: at most 256 characters")
        return model, check_options(spec, model, self.directory, "spec.")

    async def _room_for(self, model: ModelSpec, chunks: int) -> None:
        depth = int(await self._redis(self.redis.xlen(keys.bulk(model.name))))
        if depth + chunks > self.settings.max_bulk_entries:
            raise ResourceExhausted(
                f"model {model.name!r} has {depth} job chunks queued, its limit is {self.settings.max_bulk_entries}; "
                "retry later"
            )

    async def _create(self, spec: pb.JobSpec, model: ModelSpec) -> tuple[str, int | None]:
        """A new job's record (state UPLOADING) and its expiry (unix ms), or the job an
        idempotency key already made and None."""
        job_id = uuid.uuid4().hex
        ttl_ms = (spec.ttl_seconds or self.settings.job_ttl_s) * 1000
        if spec.idempotency_key:
            idem = keys.idempotency(current_tenant(), spec.idempotency_key)
            if not await self._redis(self.redis.set(idem, job_id, nx=True, px=ttl_ms)):
                existing = await self._redis(self.redis.get(idem))
                if existing is not None and await self._redis(self.redis.exists(keys.job_meta(existing.decode()))):
                    return existing.decode(), None
                await self._redis(self.redis.set(idem, job_id, px=ttl_ms))
        pipe = self.redis.pipeline(transaction=False)
        expires = self.store.create(pipe, job_id, model.name, current_tenant(), ttl_ms)
        await self._redis(pipe.execute())
        return job_id, expires

    async def _enqueue(
        self, job_id: str, model: ModelSpec, options: Options, inputs: Sequence[str | bytes], first: int, expires: int
    ) -> None:
        """XADD ``inputs`` as chunk entries ``first``, ``first + 1``, ... of the job."""
        pipe = self.redis.pipeline(transaction=False)
        for k in range(0, len(inputs), jobstore.CHUNK):
            chunk = first + k // jobstore.CHUNK
            job = options.job(
                f"{job_id}:{chunk}", "", expires, list(inputs[k : k + jobstore.CHUNK]), job_id=job_id, chunk=chunk
            )
            pipe.xadd(keys.bulk(model.name), {keys.PAYLOAD: wire.encode_job(job)})
        await self._redis(pipe.execute())

    async def _forget(self, job_id: str, spec: pb.JobSpec) -> None:
        try:
            names = [keys.job_meta(job_id), keys.job_results(job_id), keys.job_errors(job_id)]
            if spec.idempotency_key:
                names.append(keys.idempotency(current_tenant(), spec.idempotency_key))
            await asyncio.wait_for(self.redis.delete(*names), self.settings.redis_timeout_s)
        except (*TRANSIENT, TimeoutError):
            pass  # expires with its TTL

    # -- reading -----------------------------------------------------------

    async def _meta(self, job_id: str) -> dict[str, Any]:
        if not job_id:
            raise InvalidArgument("id: a job id is required")
        raw = await self._redis(self.redis.hgetall(keys.job_meta(job_id)))
        meta = jobstore.decode_meta(raw)
        # Another tenant's job answers exactly as a missing one, so ids reveal nothing.
        mine = meta.get("tenant", DEFAULT_TENANT) == current_tenant()
        if not meta or meta.get("state") == jobstore.UPLOADING or not mine:
            raise NotFound(f"job {job_id!r} does not exist or has expired")
        return meta

    async def _job(self, job_id: str, meta: dict[str, Any] | None = None) -> pb.Job:
        meta = meta or await self._meta(job_id)
        errors = await self._redis(self.redis.lrange(keys.job_errors(job_id), 0, jobstore.MAX_ERRORS))
        return pb.Job(
            id=job_id,
            model=meta["model"],
            state=meta["state"],
            inputs_total=max(0, meta["total"]),
            inputs_done=meta["done"],
            inputs_failed=meta["failed"],
            errors=[e.decode() for e in errors],
            created_at_ms=meta["created"],
            finished_at_ms=meta["finished"],
            expires_at_ms=meta["expires"],
            dimensions=meta["dimensions"],
        )

    @unary("GetJob")
    async def GetJob(self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext) -> pb.Job:
        return await self._job(request.id)

    @streaming("WatchJob")
    async def WatchJob(self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Job]:
        last = None
        while True:
            meta = await self._meta(request.id)
            seen = (meta["state"], meta["done"], meta["failed"], meta["total"])
            if seen != last:
                last = seen
                yield await self._job(request.id, meta)
            if meta["state"] in jobstore.TERMINAL:
                return
            await asyncio.sleep(POLL_S)

    @streaming("GetJobResults")
    async def GetJobResults(
        self, request: pb.GetJobResultsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.JobResult]:
        meta = await self._meta(request.id)
        size = int(meta["chunk"])
        index = request.offset
        end = None if not request.limit else request.offset + request.limit
        results = keys.job_results(request.id)
        while end is None or index < end:
            total = meta["total"]
            if 0 <= total <= index:
                return
            value = await self._redis(self.redis.hget(results, index // size))
            if value is None:
                if meta["state"] in jobstore.TERMINAL:
                    if meta["state"] == jobstore.CANCELLED:
                        return  # the rest will never be computed
                await asyncio.sleep(POLL_S)
                meta = await self._meta(request.id)
                continue
            for result in _results(value, index // size * size, index, request.encoding):
                if end is not None and result.index >= end:
                    return
                yield result
                index = result.index + 1

    @unary("CancelJob")
    async def CancelJob(self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext) -> pb.Job:
        await self._meta(request.id)
        await self._redis(self.store.cancel(request.id))
        return await self._job(request.id)

    async def _redis(self, awaitable: Any) -> Any:
        try:
            return await asyncio.wait_for(awaitable, self.settings.redis_timeout_s)
        except (*TRANSIENT, TimeoutError) as exc:
            raise Unavailable(f"the job store (Redis) is unreachable: {type(exc).__name__}") from None


def _results(value: bytes, chunk_start: int, first: int, encoding: int) -> list[pb.JobResult]:
    """The JobResults of one stored chunk (``jobstore.encode_chunk``), from input ``first`` on."""
    try:
        chunk = jobstore.decode_chunk(value)
    except wire.WireError as exc:
        raise InternalError(str(exc)) from None
    if chunk.reply is None:
        return [pb.JobResult(index=i, error=chunk.error) for i in range(first, chunk_start + chunk.failed)]
    items = embeddings(chunk.reply, encoding, first - chunk_start)
    return [pb.JobResult(index=first + i, embedding=e) for i, e in enumerate(items)]
