"""The ``embedstream.v1.Jobs`` service: async jobs that any gateway can answer for.

Everything about a job lives in Redis (``embedstream.jobstore``); this process
holds nothing a restart would lose. Uploads stream straight into the model's
bulk stream in chunks, so a gateway never buffers a corpus. A job belongs to
the tenant that made it: for any other tenant it does not exist (NOT_FOUND,
word for word as for an unknown id).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from embedstream import jobstore, keys, tracing, wire
from embedstream.connections import call
from embedstream.errors import InvalidArgument, NotFound, clip
from embedstream.gateway import mediacheck
from embedstream.gateway.auth import DEFAULT_TENANT, current_tenant
from embedstream.gateway.directory import Directory
from embedstream.gateway.dispatch import Options
from embedstream.gateway.jobmaking import JobMaker, digest
from embedstream.gateway.optioncheck import check_chunks, check_options
from embedstream.gateway.shape import job_results
from embedstream.gateway.status import streaming, unary
from embedstream.gateway.validation import check_token_inputs, refuse_scorers, validate_inputs, verify_images
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
        self.maker = JobMaker(settings, redis, self.store)

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
        check_token_inputs(inputs, request.spec.prompt_name, options, "spec.")
        check_chunks(inputs, options, self.settings, per_request=False)
        kinds = mediacheck.kinds_of(request.inputs)
        await verify_images(inputs, self.settings, kinds=kinds)
        await mediacheck.verify(inputs, kinds, options.media, self.settings)
        size = mediacheck.JOB_CHUNK if kinds else jobstore.CHUNK
        await self.maker.room_for(model, -(-n // size))
        job_id, expires = await self.maker.create(request.spec, model, digest(request.spec, request.inputs), size)
        tracing.annotate({"embedstream.job_id": job_id})
        if expires is not None:
            try:
                await self.maker.enqueue(job_id, model, options, inputs, 0, expires, kinds, size)
                await self._redis(self.store.complete(job_id, n))
            except BaseException:
                # Not accepted (Redis full, say): no job, and the key is free for the retry.
                await self.maker.forget(job_id, request.spec)
                raise
        await self.maker.replicated()  # also for an existing job: a retry must not confirm what a failover could lose
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
        await self.maker.room_for(model, 1)
        # A header that sets media makes a media job: one input (a clip) per chunk entry.
        size = mediacheck.JOB_CHUNK if spec.HasField("media") else jobstore.CHUNK
        job_id, expires = await self.maker.create(spec, model, digest(spec, None), size)
        tracing.annotate({"embedstream.model": model.name, "embedstream.job_id": job_id})
        if expires is None:
            async for _ in stream:  # the job exists: read and drop the repeated upload
                pass
            await self.maker.replicated()
            return await self._job(job_id)
        total = 0
        buffered: list[wire.Item] = []
        kinds = ""
        try:
            async for message in stream:
                if message.WhichOneof("part") != "chunk":
                    raise InvalidArgument(f"chunk after input {total}: only one header is allowed")
                items = validate_inputs(
                    message.chunk.inputs, model, self.settings, self.directory, options.truncate, start=total
                )
                check_token_inputs(items, spec.prompt_name, options, "spec.")
                check_chunks(items, options, self.settings, start=total, per_request=False)
                more = mediacheck.job_kinds(message.chunk.inputs, size, total)
                await verify_images(items, self.settings, start=total, kinds=more)
                await mediacheck.verify(items, more, options.media, self.settings, start=total)
                total += len(items)
                if total > self.settings.max_job_inputs:
                    raise InvalidArgument(f"inputs: a job takes at most {self.settings.max_job_inputs} inputs")
                buffered.extend(items)
                kinds += more
                whole = len(buffered) // size * size
                if whole:
                    at = (total - len(buffered)) // size
                    await self.maker.enqueue(job_id, model, options, buffered[:whole], at, expires, kinds, size)
                    del buffered[:whole]
                    kinds = kinds[whole:]
            if total == 0:
                raise InvalidArgument("inputs: the upload held no inputs")
            if buffered:
                chunk_index = (total - len(buffered)) // size
                await self.maker.enqueue(job_id, model, options, buffered, chunk_index, expires, kinds, size)
            tracing.annotate({"embedstream.inputs": total})
            await self._redis(self.store.complete(job_id, total))
            await self.maker.replicated()
        except BaseException:
            # An unfinished upload is no job: forget it; workers drop its chunks.
            await self.maker.forget(job_id, spec)
            raise
        return await self._job(job_id)

    def _check_spec(self, spec: pb.JobSpec) -> tuple[ModelSpec, Options]:
        model = self.registry.resolve(spec.model)
        refuse_scorers(model, "spec.model: ")
        self.directory.refuse_failed(model.name)
        if spec.ttl_seconds > self.settings.max_job_ttl_s:
            raise InvalidArgument(
                f"spec.ttl_seconds: {spec.ttl_seconds} exceeds the limit of {self.settings.max_job_ttl_s}"
            )
        if len(spec.idempotency_key) > 256:
            raise InvalidArgument("spec.idempotency_key: at most 256 characters")
        return model, check_options(spec, model, self.directory, "spec.")

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
            inputs_cached=meta.get("cached", 0),
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
            for result in job_results(value, index // size * size, index, request.encoding):
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
