"""Making a job: its record and idempotency key written together, its inputs queued in
chunks, an unfinished one forgotten, and (where asked) replicas waited for before the job is
called accepted. Used by the Jobs service for SubmitJob and UploadJob."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from typing import Any

from embedstream import jobstore, keys, wire
from embedstream.connections import REDIS_ERRORS, call, replicated
from embedstream.errors import AlreadyExists, ResourceExhausted, Unavailable, clip
from embedstream.gateway import mediacheck
from embedstream.gateway.auth import current_tenant
from embedstream.gateway.dispatch import Options
from embedstream.registry import ModelSpec
from embedstream.settings import Settings
from embedstream.v1 import jobs_pb2 as pb

#: How often a duplicate polls for the job another call is still creating.
POLL_S = 0.05


class JobMaker:
    """The writes that create one job."""

    def __init__(self, settings: Settings, redis: Any, store: jobstore.JobStore) -> None:
        self.settings = settings
        self.redis = redis
        self.store = store

    async def replicated(self) -> None:
        """With ``redis_min_replicas`` set, answer "accepted" only once that many replicas
        hold everything written so far, so a failover to one of them keeps the job."""
        wanted = self.settings.redis_min_replicas
        timeout_s = self.settings.redis_timeout_s
        if wanted and not await self._redis(replicated(self.redis, wanted, timeout_s), timeout_s * 2):
            raise Unavailable(
                f"the job was written but fewer than {wanted} Redis replicas confirmed it in "
                f"{self.settings.redis_timeout_s} s; retry with the same idempotency key"
            )

    async def room_for(self, model: ModelSpec, chunks: int) -> None:
        depth = int(await self._redis(self.redis.xlen(keys.bulk(model.name))))
        if depth + chunks > self.settings.max_bulk_entries:
            raise ResourceExhausted(
                f"model {model.name!r} has {depth} job chunks queued, its limit is {self.settings.max_bulk_entries}; "
                "retry later"
            )

    async def create(
        self, spec: pb.JobSpec, model: ModelSpec, digest: str, size: int = jobstore.CHUNK
    ) -> tuple[str, int | None]:
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
            made = await self._redis(self.store.create(model.name, current_tenant(), ttl_ms, key, digest, size))
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
                await asyncio.sleep(POLL_S)
            if state is not None:
                return made.job_id, None
            # The call that made it failed and forgot it (key and record together): make it anew.

    async def enqueue(
        self,
        job_id: str,
        model: ModelSpec,
        options: Options,
        inputs: Sequence[wire.Item],
        first: int,
        expires: int,
        kinds: str = "",
        size: int = jobstore.CHUNK,
    ) -> None:
        """XADD ``inputs`` (of ``kinds``) as chunk entries ``first``, ``first + 1``, ... of ``size`` inputs."""
        pipe = self.redis.pipeline(transaction=False)
        for k in range(0, len(inputs), size):
            chunk = first + k // size
            part = mediacheck.kinds_only_with_media(kinds[k : k + size])
            job = options.job(
                f"{job_id}:{chunk}", "", expires, list(inputs[k : k + size]), job_id=job_id, chunk=chunk, kinds=part
            )
            pipe.xadd(keys.bulk(model.name), {keys.PAYLOAD: wire.encode_job(job)})
        await self._redis(pipe.execute())

    async def forget(self, job_id: str, spec: pb.JobSpec) -> None:
        try:
            names = [keys.job_meta(job_id), keys.job_results(job_id), keys.job_errors(job_id)]
            if spec.idempotency_key:
                names.append(keys.idempotency(current_tenant(), spec.idempotency_key))
            await asyncio.wait_for(self.redis.delete(*names), self.settings.redis_timeout_s)
        except REDIS_ERRORS:
            pass  # expires with its TTL

    async def _redis(self, awaitable: Any, timeout_s: float = 0.0) -> Any:
        return await call(awaitable, timeout_s or self.settings.redis_timeout_s, "the job store (Redis)")


def digest(spec: pb.JobSpec, inputs: Sequence[Any] | None) -> str:
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
