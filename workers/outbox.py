"""Everything a worker writes back to Redis: replies, job results, acks, dead letters.

Each write ends with XACK + XDEL of the entry in the same pipeline, after the
reply or result: Redis runs a pipeline in order, so an entry is never
acknowledged before its answer is stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from embedstream import jobstore, keys, metrics, wire
from embedstream.connections import TRANSIENT
from embedstream.errors import Code
from embedstream.registry import ModelSpec
from workers import finish
from workers.batcher import Entry

log = logging.getLogger(__name__)


# Dead letters are kept to a fixed number; whatever the cap trims is counted.
DEAD_LETTER = """
local before = redis.call('XLEN', KEYS[1])
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'p', ARGV[2], 'reason', ARGV[3], 'id', ARGV[4], 'worker', ARGV[5])
return before + 1 - redis.call('XLEN', KEYS[1])
"""


def now_ms() -> float:
    """Wall-clock milliseconds, the unit of deadlines across processes."""
    return time.time() * 1000.0


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
        self._record = redis.register_script(jobstore.RECORD)
        self._dead = redis.register_script(DEAD_LETTER)
        self.max_dead_letters = max_dead_letters

    async def deliver(self, entries: list[Entry]) -> None:
        """Write each reply (or job result), then XACK + XDEL, in one pipeline (Redis keeps the order)."""
        pipe = self.redis.pipeline(transaction=False)
        for entry in entries:
            if entry.bulk:
                await self.record_chunk(pipe, entry)
            else:
                reply = wire.encode_reply(self.answer(entry))
                pipe.xadd(entry.job.reply_to, {keys.PAYLOAD: reply}, nomkstream=True)
            pipe.xack(entry.stream, keys.GROUP, entry.stream_id)
            pipe.xdel(entry.stream, entry.stream_id)
        await self.execute(pipe)

    async def record_chunk(self, pipe: Any, entry: Entry, error: str = "") -> None:
        """Store a job chunk's vectors (or failure) in the job; the script counts it once."""
        job = entry.job
        message = error or (entry.error[1] if entry.error else "")
        if message:
            value, failed, dims = jobstore.failure(len(job.inputs), message), 1, 0
        else:
            answer = self.answer(entry)
            value, failed, dims = jobstore.RESULT + wire.encode_reply(answer), 0, answer.dimensions
        # On a pipeline this only queues EVALSHA (redis-py loads the script first).
        await self._record(
            keys=[keys.job_meta(job.job_id), keys.job_results(job.job_id), keys.job_errors(job.job_id)],
            args=[job.chunk, value, len(job.inputs), failed, dims, int(now_ms()), message],
            client=pipe,
        )

    def answer(self, entry: Entry) -> wire.Reply:
        """The reply message for a finished (or failed) entry."""
        return finish.reply(entry, self.runner, self.spec.quantization_range, self.worker)

    async def execute(self, pipe: Any) -> list[Any]:
        """Run a pipeline, retrying while Redis is unreachable; its results."""
        # A reply that cannot be written is retried until Redis is back; the
        # entry stays pending (and reclaimable) until then, so nothing is lost.
        delay = 0.05
        while True:
            try:
                return list(await pipe.execute())
            except TRANSIENT as exc:
                if self.stopping.is_set() and delay >= 1.0:
                    log.error("giving up a reply while stopping: %s", exc)
                    return []
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def finish_silently(self, stream: str, stream_id: bytes) -> None:
        """Acknowledge and delete an entry nobody waits for any more."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.xack(stream, keys.GROUP, stream_id)
        pipe.xdel(stream, stream_id)
        await self.execute(pipe)

    async def dead_letter(
        self, stream: str, stream_id: bytes, payload: bytes, reason: str, job: wire.Job | None
    ) -> None:
        """Move an entry to the dead-letter stream and tell its caller, if known."""
        log.warning("dead-lettering %s of model %s: %s", stream_id, self.model, reason)
        metrics.DEAD_LETTERED.labels(self.model).inc()
        pipe = self.redis.pipeline(transaction=False)
        await self._dead(
            keys=[keys.dead_letters(self.model)],
            args=[self.max_dead_letters, payload, reason, stream_id, self.worker],
            client=pipe,
        )
        if job is not None and job.job_id:
            entry = Entry(stream_id, job, stream, payload, [], False, bulk=True)
            await self.record_chunk(pipe, entry, f"dead-lettered: {reason}")
        elif job is not None:
            reply = wire.Reply(
                job.id,
                worker=self.worker,
                error_code=Code.INTERNAL.value,
                error_message=f"request failed on model {self.model} and was dead-lettered: {reason}",
            )
            pipe.xadd(job.reply_to, {keys.PAYLOAD: wire.encode_reply(reply)}, nomkstream=True)
        pipe.xack(stream, keys.GROUP, stream_id)
        pipe.xdel(stream, stream_id)
        results = await self.execute(pipe)
        if results and int(results[0]):
            metrics.DEAD_LETTERS_TRIMMED.labels(self.model).inc(int(results[0]))
