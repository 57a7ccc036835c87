"""The ``embedstream.v1.Jobs`` service: async jobs that any gateway can answer for.

Everything about a job lives in Redis (``embedstream.jobstore``); this process
holds nothing a restart would lose. Uploads stream straight into the model's
bulk stream in chunks, so a gateway never buffers a corpus. A job belongs to
the tenant that made it: for any other tenant it does not exist (NOT_FOUND,
word for word as for an unknown id).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from embedstream.gateway.auth import DEFAULT_TENANT, current_tenant
from embedstream.gateway.directory import Directory
from embedstream.gateway.dispatch import Options
from embedstream.gateway.shape import chunked, embeddings
from embedstream.gateway.status import streaming, unary
from embedstream.gateway.validation import check_chunks, check_options, validate_inputs, verify_images

from embedstream import jobstore, keys, tracing, wire
from embedstream.connections import REDIS_ERRORS, call, replicated
from embedstream.errors import (
    AlreadyExists,
    InternalError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
    clip,
)
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
        check_chunks(inputs, options, self.settings, per_request=False)
        await verify_images(inputs, self.settings)
        await self._room_for(model, -(-n // jobstore.CHUNK))
        job_id, expires = await self._create(request.spec, model, _digest(request.spec, request.inputs))
        tracing.annotate({"embedstream.job_id": job_id})
        if expires is not None:
            try:
                await self._enqueue(job_id, model, options, inputs, 0, expires)
                await self._redis(self.store.complete(job_id, n))
            except BaseException:
                # Not accepted (Redis full, say): no job, and the key is free for the retry.
                await self._forget(job_id, request.spec)
                raise
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
        job_id, expires = await self._create(spec, model, _digest(spec, None))
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
                check_chunks(items, options, self.settings, start=total, per_request=False)
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
        timeout_s = self.settings.redis_timeout_s
        if wanted and not await self._redis(replicated(self.redis, wanted, timeout_s), timeout_s * 2):
            raise Unavailable(
                f"the job was written but fewer than {wanted} Redis replicas confirmed it in "
                f"{self.settings.redis_timeout_s} s; retry with the same idempotency key"
            )

    def _check_spec(self, spec: pb.JobSpec) -> tuple[ModelSpec, Options]:
        model = self.registry.resolve(spec.model)
        if model.family == "rerank":
            raise InvalidArgument(f"spec.model: {model.name!r} is a rerank model; call Rerank or RerankStream")
        self.directory.refuse_failed(model.name)
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

    async def _create(self, spec: pb.JobSpec, model: ModelSpec, digest: str) -> tuple[str, int | None]:
        """A new job's record (state UPLOADING) and its expiry (unix ms), or the job an
        idempotency key already made and None, once that job's creation is complete.

        The key and the record are written together by one script, so every concurrent
        duplicate finds the same job; it waits while the first call is still enqueuing, and
        makes the job itself where that call failed and forgot it. A request whose digest
        (inputs and options) differs from the one that made the job is refused."""
        ttl_ms = (spec.ttl_seconds or self.settings.job_ttl_s) * 1000
        key = spec.idempotency_key
        give_up = time.monotonic() + self.settings.max_deadline_s
        while True:
            made = await self._redis(self.store.create(model.name, current_tenant(), ttl_ms, key, digest))
            if made.expires is not None:
                return made.job_id, made.expires
            if made.digest != digest:
                raise AlreadyExists(
                    f"spec.idempotency_key {clip(key)} already made job {made.job_id} with other inputs or "
                    "options; use a new key for a different job"
                )
            while (state := await self._redis(self.redis.hget(keys.job_meta(made.job_id), "state"))) == b"0":
                if time.monotonic() > give_up:
                    raise Unavailable(
                        f"job {made.job_id} of spec.idempotency_key {clip(key)} is still being created by another "
                        "call; retry with the same key"
                    )
                await asyncio.sleep(POLL_S / 4)
            if state is not None:
                return made.job_id, None
            # The call that made it failed and forgot it (key and record together): make it anew.

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
        except REDIS_ERRORS:
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
            raise NotFound(f"job {clip(job_id)} does not exist or has expired")
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

    async def _redis(self, awaitable: Any, timeout_s: float = 0.0) -> Any:
        return await call(awaitable, timeout_s or self.settings.redis_timeout_s, "the job store (Redis)")


def _digest(spec: pb.JobSpec, inputs: Sequence[Any] | None) -> str:
    """What an idempotency key remembers of the request that made its job: the spec (model and
    options, less the key) and, for SubmitJob, the inputs. An upload's inputs come after its job
    is made, so its digest covers the header only."""
    header = pb.JobSpec()
    header.CopyFrom(spec)
    header.ClearField("idempotency_key")
    h = hashlib.sha256(header.SerializeToString(deterministic=True))
    if inputs is None:
        h.update(b"\0upload")
    for item in inputs or ():
        data = item.SerializeToString(deterministic=True)
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def _results(value: bytes, chunk_start: int, first: int, encoding: int) -> list[pb.JobResult]:
    """The JobResults of one stored chunk (``jobstore.encode_chunk``), from input ``first`` on."""
    try:
        chunk = jobstore.decode_chunk(value)
    except wire.WireError as exc:
        raise InternalError(str(exc)) from None
    if chunk.reply is None:
        return [pb.JobResult(index=i, error=chunk.error) for i in range(first, chunk_start + chunk.failed)]
    if chunk.reply.spans is not None:
        results = [
            pb.JobResult(index=chunk_start + i) for i in range(len(chunk.reply.spans) and chunk.reply.spans[-5] + 1)
        ]
        for e in chunked(chunk.reply, encoding):
            e.chunk.input += chunk_start  # the input's index in the job, as JobResult.index
            results[e.chunk.input - chunk_start].chunks.append(e)
        return results[first - chunk_start :]
    items = embeddings(chunk.reply, encoding, first - chunk_start)
    return [pb.JobResult(index=first + i, embedding=e) for i, e in enumerate(items)]
