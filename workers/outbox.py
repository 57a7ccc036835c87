"""Everything a worker writes back to Redis: replies, job results, acks, dead letters.

An entry is never acknowledged before its answer (a reply, a job result, a dead
letter) is stored: on one server both go in one pipeline, which Redis runs in
order; across the nodes of a Redis Cluster the answer is written first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from embedstream.workers import finish, spans
from embedstream.workers.batcher import Entry
from redis.asyncio.cluster import RedisCluster

from embedstream import jobstore, keys, metrics, wire
from embedstream.backoff import Backoff
from embedstream.connections import TRANSIENT
from embedstream.errors import Code
from embedstream.registry import ModelSpec

log = logging.getLogger(__name__)
T = TypeVar("T")


# Dead letters are kept to a fixed number; whatever the cap trims is counted.
DEAD_LETTER = """
local before = redis.call('XLEN', KEYS[1])
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'p', ARGV[2], 'reason', ARGV[3], 'id', ARGV[4], 'worker', ARGV[5])
return before + 1 - redis.call('XLEN', KEYS[1])
"""


class Outbox:
    """Writes for one worker of one model."""

    def __init__(
        self, redis: Any, spec: ModelSpec, model: Any, worker: str, stopping: asyncio.Event, max_dead_letters: int
    ) -> None:
        self.redis = redis
        self.model = spec.name
        self.spec = spec
        self.runner = model
        self.worker = worker
        self.stopping = stopping
        self.jobs = jobstore.JobStore(redis)
        self._dead = redis.register_script(DEAD_LETTER)
        self.cluster = isinstance(redis, RedisCluster)
        self.max_dead_letters = max_dead_letters

    async def deliver(self, entries: list[Entry]) -> None:
        """Write every reply and job result, then XACK + XDEL the entries.

        On one Redis server that is one pipeline: Redis runs it in order, and an entry
        leaves its stream as its answer lands. In a Redis Cluster a reply stream, a job
        and a model's queue live on different nodes, where a pipeline keeps no order
        (nor takes scripts): there the answers are written first, then acknowledged."""
        replies = [(e.job.reply_to, wire.encode_reply(self.answer(e))) for e in entries if not e.bulk]
        chunks = [self._chunk(e) for e in entries if e.bulk]
        done = [(e.stream, e.stream_id) for e in entries]

        async def write() -> list[Any]:
            pipe = self.redis.pipeline(transaction=False)
            for stream, reply in replies:
                pipe.xadd(stream, {keys.PAYLOAD: reply}, nomkstream=True)
            if self.cluster:
                written = list(await pipe.execute()) if replies else []
                return written + [await self.jobs.record(chunk) for chunk in chunks]
            for chunk in chunks:
                await self.jobs.record(chunk, client=pipe)  # queues EVALSHA on the pipeline
            _acknowledge(pipe, done)
            return list(await pipe.execute())

        if await self.retrying(write) is not None and self.cluster:
            await self.acknowledge(done)

    def _chunk(self, entry: Entry, error: str = "") -> jobstore.Call:
        """The write that stores a job chunk's vectors (or its failure) in its job."""
        message = error or (entry.error[1] if entry.error else "")
        if message:
            return jobstore.recording(entry.job, jobstore.Chunk(failed=len(entry.job.inputs), error=message))
        return jobstore.recording(entry.job, jobstore.Chunk(self.answer(entry)))

    def answer(self, entry: Entry) -> wire.Reply:
        """The reply message for a finished (or failed) entry."""
        return finish.reply(entry, self.runner, self.spec.quantization_range, self.worker)

    async def retrying(self, operation: Callable[[], Awaitable[T]]) -> T | None:
        """Run ``operation`` (which builds its own pipeline), retrying while Redis is
        unreachable; None when giving up because the worker is stopping."""
        # A reply that cannot be written is retried until Redis is back; the
        # entry stays pending (and reclaimable) until then, so nothing is lost.
        backoff = Backoff()
        while True:
            try:
                return await operation()
            except TRANSIENT as exc:
                if self.stopping.is_set() and backoff.longest:
                    log.error("giving up a reply while stopping: %s", exc)
                    return None
                await backoff.wait()

    async def acknowledge(self, entries: list[tuple[str, bytes]]) -> None:
        """XACK + XDEL: the entries are done (answered, or nobody waits for them)."""

        async def ack() -> list[Any]:
            pipe = self.redis.pipeline(transaction=False)
            _acknowledge(pipe, entries)
            return list(await pipe.execute())

        await self.retrying(ack)

    async def finish_silently(self, stream: str, stream_id: bytes) -> None:
        """Acknowledge and delete an entry nobody waits for any more."""
        await self.acknowledge([(stream, stream_id)])

    async def dead_letter(
        self, stream: str, stream_id: bytes, payload: bytes, reason: str, job: wire.Job | None
    ) -> None:
        """Move an entry to the dead-letter stream and tell its caller, if known; its span records why."""
        log.warning("dead-lettering %s of model %s: %s", stream_id, self.model, reason)
        metrics.DEAD_LETTERED.labels(self.model).inc()
        chunk = None
        if job is not None and job.job_id:
            entry = Entry(stream_id, job, stream, payload, [], False, bulk=True)
            chunk = self._chunk(entry, f"dead-lettered: {reason}")

        async def write() -> int:
            fields = [self.max_dead_letters, payload, reason, stream_id, self.worker]
            trimmed = await self._dead(keys=[keys.dead_letters(self.model)], args=fields)
            if chunk is not None:
                await self.jobs.record(chunk)
            elif job is not None:
                reply = wire.Reply(
                    job.id,
                    worker=self.worker,
                    error_code=Code.INTERNAL.value,
                    error_message=f"request failed on model {self.model} and was dead-lettered: {reason}",
                )
                await self.redis.xadd(job.reply_to, {keys.PAYLOAD: wire.encode_reply(reply)}, nomkstream=True)
            return int(trimmed)

        trimmed = await self.retrying(write)
        if trimmed:
            metrics.DEAD_LETTERS_TRIMMED.labels(self.model).inc(trimmed)
        if trimmed is not None:
            await self.acknowledge([(stream, stream_id)])
        if job is not None:
            spans.record(job, self.model, self.worker, error=f"dead-lettered: {reason}")


def _acknowledge(pipe: Any, entries: list[tuple[str, bytes]]) -> None:
    """Queue XACK + XDEL of each entry on ``pipe``."""
    for stream, stream_id in entries:
        pipe.xack(stream, keys.GROUP, stream_id)
        pipe.xdel(stream, stream_id)
