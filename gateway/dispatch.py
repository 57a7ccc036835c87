"""Puts one request on its model's stream and waits for the worker's reply."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from embedstream import clock, keys, metrics, tracing, wire
from embedstream.backoff import Backoff
from embedstream.connections import REDIS_ERRORS, TRANSIENT, refusal
from embedstream.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from embedstream.gateway.directory import Directory
from embedstream.gateway.replies import ReplyRouter
from embedstream.registry import ModelSpec

# Admission and enqueue in one atomic step: the queue can never grow past the
# limit between a length check and the XADD. MAXLEN ~ is a safety net far
# above the limit; it never trims work in normal operation.
ADMIT = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return false end
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', ARGV[3], ARGV[4])
"""


class Options(wire.Options):
    """A validated request's options; the gateway makes its queue entries from them."""

    __slots__ = ()

    def job(self, id: str, reply_to: str, deadline_ms: int, inputs: list[wire.Item], **chunk: Any) -> wire.Job:
        """The queue entry for ``inputs`` with these options, stamped now, carrying the current span's context."""
        return self.to_job(id, reply_to, deadline_ms, int(clock.now_ms()), inputs, trace=tracing.traceparent(), **chunk)


@dataclass(slots=True)
class Request:
    """A validated request, ready to enqueue."""

    spec: ModelSpec
    inputs: list[wire.Item]
    options: Options = field(default_factory=Options)
    #: One letter per input when any is video or audio (``mediawire.KINDS``), else "".
    kinds: str = ""


class Dispatcher:
    """Enqueue with admission control, await the reply, clean up on give-up."""

    def __init__(self, redis: object, router: ReplyRouter, directory: Directory, timeout_s: float) -> None:
        self._redis = redis
        self._admit = redis.register_script(ADMIT)  # type: ignore[attr-defined]
        self.router = router
        self.directory = directory
        self.timeout_s = timeout_s
        self._by_model: dict[str, set[str]] = {}
        self._withdrawals: dict[str, list[bytes]] = {}
        self._flusher: asyncio.Task[None] | None = None

    async def embed(self, request: Request, deadline: float, wait_for_room: bool = False) -> wire.Reply:
        """The worker's reply for ``request``; raises an EmbedstreamError otherwise.

        ``deadline`` is absolute (time.time()). Unary calls fail fast on a full
        queue; streams pass ``wait_for_room`` and wait, slowing their client.
        A stream's requests go on the model's stream lane (``keys.streams``) where its
        workers read one, so a stream's window never queues ahead of a unary call.
        """
        spec = request.spec
        tracing.annotate({"embedstream.model": spec.name, "embedstream.inputs": len(request.inputs)})
        if not self.directory.redis_ok:
            raise Unavailable("the queue (Redis) is unreachable; retry shortly")
        self.directory.refuse_failed(spec.name)
        if (
            not spec.scale_to_zero
            and not self.directory.serving(spec.name)
            and not await self.directory.recheck(spec.name)
        ):
            raise Unavailable(f"no live worker serves model {spec.name!r}; retry shortly")
        job = request.options.job(
            uuid.uuid4().hex, self.router.stream, int(deadline * 1000), request.inputs, kinds=request.kinds
        )
        future = self.router.expect(job.id)
        waiting = self._by_model.setdefault(spec.name, set())
        waiting.add(job.id)
        metrics.INFLIGHT.labels(spec.name).inc()
        stream_id: bytes | None = None
        try:
            streamed = wait_for_room and self.directory.states[spec.name].streams_lane
            lane = keys.streams(spec.name) if streamed else keys.queue(spec.name)
            stream_id = await self._enqueue(spec, lane, job, deadline, wait_for_room)
            remaining = deadline - time.time()
            if remaining <= 0:
                raise DeadlineExceeded("deadline passed while waiting for a worker")
            try:
                return await asyncio.wait_for(asyncio.shield(future), remaining)
            except TimeoutError:
                raise DeadlineExceeded(
                    f"deadline passed while waiting for model {spec.name!r} "
                    f"(queue depth {self.directory.states[spec.name].queue_depth})"
                ) from None
        except BaseException:
            # Timed out, cancelled or failed: take the entry back so no worker
            # spends time on an answer nobody will read.
            if stream_id is not None:
                self._withdraw(lane, stream_id)
            raise
        finally:
            self.router.forget(job.id)
            waiting.discard(job.id)
            metrics.INFLIGHT.labels(spec.name).dec()

    def fail_model(self, model: str, error: Unavailable) -> None:
        """Answer every call waiting on ``model`` with ``error``."""
        self.router.fail_all(error, list(self._by_model.get(model, ())))

    async def _enqueue(self, spec: ModelSpec, lane: str, job: wire.Job, deadline: float, wait_for_room: bool) -> bytes:
        payload = wire.encode_job(job)
        args = [spec.max_queue_entries, spec.max_queue_entries * 2 + 1000, keys.PAYLOAD, payload]
        backoff = Backoff(first=0.005, most=0.1)
        while True:
            try:
                stream_id = await asyncio.wait_for(self._admit(keys=[lane], args=args), self.timeout_s)
            except REDIS_ERRORS as exc:
                if isinstance(exc, TRANSIENT):
                    self.directory.redis_ok = False  # until the next refresh proves otherwise
                error = refusal(exc, "the queue (Redis)")
                # Redis full is a full queue by another name: a stream waits for room.
                if not (wait_for_room and isinstance(error, ResourceExhausted)):
                    raise error from None
                stream_id = None
            if stream_id is not None:
                metrics.INPUTS.labels(spec.name).inc(len(job.inputs))
                return bytes(stream_id)
            if not wait_for_room:
                metrics.ADMISSION_REJECTED.labels(spec.name).inc()
                hint = self.directory.retry_hint_ms(spec.name)
                raise ResourceExhausted(
                    f"model {spec.name!r} has {spec.max_queue_entries} requests queued, its limit; "
                    f"retry with backoff, after {hint} ms or more",
                    retry_after_ms=hint,
                )
            if time.time() + backoff.delay >= deadline:
                raise DeadlineExceeded(f"deadline passed while model {spec.name!r}'s queue (or Redis) was full")
            await backoff.wait()

    def _withdraw(self, lane: str, stream_id: bytes) -> None:
        # Batched: a client leaving a stream withdraws hundreds of entries at
        # once; one XDEL per lane carries them all.
        self._withdrawals.setdefault(lane, []).append(stream_id)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_withdrawals())

    async def _flush_withdrawals(self) -> None:
        while self._withdrawals:
            lane, ids = self._withdrawals.popitem()
            try:
                await asyncio.wait_for(self._redis.xdel(lane, *ids), self.timeout_s)  # type: ignore[attr-defined]
            except REDIS_ERRORS:
                pass  # the worker still skips them once their deadline passes
