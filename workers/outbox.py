"""Everything a worker writes back to Redis: replies, job results, acks, dead letters.

An entry is never acknowledged before its answer (a reply, a job result, a dead
letter) is stored and confirmed: the answers are written first, each reply read,
and only the entries whose answer Redis took are acknowledged. An answer Redis
refuses (full under ``maxmemory``, a command its ACL denies) is retried a few
times; then the entry is handed back to the group unacknowledged, its delivery
count restored (the refusal was not its fault), and a reclaim scan runs it again.
While Redis is unreachable nothing can be handed back, so writes are retried
until it returns (or the worker stops, leaving the entry pending to be reclaimed).
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
from embedstream.connections import REDIS_ERRORS, TRANSIENT
from embedstream.errors import Code
from embedstream.loops import Mishaps
from embedstream.registry import ModelSpec

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Tries of a write Redis refuses (rather than fails to reach) before its entry is handed back.
WRITE_TRIES = 5

# Dead letters are kept to a fixed number; whatever the cap trims is counted.
DEAD_LETTER = """
local before = redis.call('XLEN', KEYS[1])
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'p', ARGV[2], 'reason', ARGV[3], 'id', ARGV[4], 'worker', ARGV[5])
return before + 1 - redis.call('XLEN', KEYS[1])
"""

# Give entries this worker still owns back to the group: idle as if timed out, so the next
# reclaim scan takes them, and with the delivery that failed to store its answer uncounted.
# XCLAIM is no denyoom command, so this works while Redis is full.
# KEYS: stream. ARGV: group, consumer, idle ms, ids.
HAND_BACK = """
for i = 4, #ARGV do
  local row = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)[1]
  if row and row[2] == ARGV[2] then
    local count = math.max(0, tonumber(row[4]) - 1)
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3], 'RETRYCOUNT', count, 'JUSTID')
  end
end
return 0
"""


class Unstored(Exception):
    """Some writes of one attempt failed; the first failure is ``cause``."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class Outbox:
    """Writes for one worker of one model."""

    def __init__(
        self,
        redis: Any,
        spec: ModelSpec,
        model: Any,
        worker: str,
        stopping: asyncio.Event,
        max_dead_letters: int,
        visibility_timeout_s: float,
    ) -> None:
        self.redis = redis
        self.model = spec.name
        self.spec = spec
        self.runner = model
        self.worker = worker
        self.stopping = stopping
        self.jobs = jobstore.JobStore(redis)
        self._dead = redis.register_script(DEAD_LETTER)
        self._hand_back = redis.register_script(HAND_BACK)
        self.cluster = isinstance(redis, RedisCluster)
        self.max_dead_letters = max_dead_letters
        self.visibility_timeout_s = visibility_timeout_s
        self._mishaps = Mishaps("storing answers")

    async def deliver(self, entries: list[Entry]) -> list[Entry]:
        """Store every reply and job result, confirm each, then XACK + XDEL the entries whose
        answer is stored. Returns the entries whose answer Redis kept refusing: the caller
        stops holding them and :meth:`hand_back` gives them to the group, unacknowledged."""
        pending: dict[int, tuple[Entry, Callable[[Any], Any]]] = {}
        for i, entry in enumerate(entries):
            if entry.bulk:
                chunk = self._chunk(entry)
                pending[i] = (entry, lambda client, chunk=chunk: self.jobs.record(chunk, client=client))  # type: ignore[misc]
            else:
                stream, reply = entry.job.reply_to, wire.encode_reply(self.answer(entry))
                pending[i] = (
                    entry,
                    lambda client, s=stream, r=reply: client.xadd(s, {keys.PAYLOAD: r}, nomkstream=True),  # type: ignore[misc]
                )

        async def write() -> None:
            # One pipeline of writes (no acknowledgement in it: a refused write must leave its
            # entry pending), each reply read. In a Redis Cluster a pipeline takes no scripts:
            # job results are recorded one by one.
            order = list(pending)
            pipe = self.redis.pipeline(transaction=False)
            outcomes: dict[int, Any] = {}
            for i in order:
                if self.cluster and pending[i][0].bulk:
                    try:
                        outcomes[i] = await pending[i][1](None)
                    except REDIS_ERRORS as exc:
                        outcomes[i] = exc
                else:
                    await _queue(pending[i][1](pipe))
            piped = [i for i in order if i not in outcomes]
            if piped:
                outcomes.update(zip(piped, await pipe.execute(raise_on_error=False)))
            failures = [outcomes[i] for i in order if isinstance(outcomes[i], BaseException)]
            for i in order:
                if not isinstance(outcomes[i], BaseException):
                    del pending[i]
            if failures:
                raise Unstored(failures[0])

        await self._persist(write, "answer")
        stored = [e for i, e in enumerate(entries) if i not in pending]
        if stored:
            await self.acknowledge([(e.stream, e.stream_id) for e in stored])
        return [entry for entry, _ in pending.values()]

    async def hand_back(self, entries: list[tuple[str, bytes]]) -> None:
        """Give entries whose answer could not be stored back to the group (see HAND_BACK); where
        even that fails they stay pending and are reclaimed after the visibility timeout."""
        idle_ms = int(self.visibility_timeout_s * 1000)
        for stream in {s for s, _ in entries}:
            ids = [sid for s, sid in entries if s == stream]
            try:
                await self._hand_back(keys=[stream], args=[keys.GROUP, self.worker, idle_ms, *ids])
            except REDIS_ERRORS as exc:
                log.warning(
                    "could not hand back %d entries of %s (%s); reclaimed after the timeout", len(ids), stream, exc
                )

    def _chunk(self, entry: Entry, error: str = "") -> jobstore.Call:
        """The write that stores a job chunk's vectors (or its failure) in its job."""
        message = error or (entry.error[1] if entry.error else "")
        if message:
            return jobstore.recording(entry.job, jobstore.Chunk(failed=len(entry.job.inputs), error=message))
        return jobstore.recording(entry.job, jobstore.Chunk(self.answer(entry)))

    def answer(self, entry: Entry) -> wire.Reply:
        """The reply message for a finished (or failed) entry."""
        return finish.reply(entry, self.runner, self.spec.quantization_range, self.worker)

    async def _persist(self, operation: Callable[[], Awaitable[T]], kind: str) -> tuple[bool, T | None]:
        """Run ``operation`` (which builds its own pipeline) until it goes through: (True, its
        result), or (False, None) after ``WRITE_TRIES`` refusals, or once stopping while Redis
        stays unreachable. A refusal is counted (``embedstream_worker_unstored_total``) on giving up."""
        backoff = Backoff()
        refusals = 0
        while True:
            try:
                result = await operation()
                self._mishaps.recovered()
                return True, result
            except (*REDIS_ERRORS, Unstored) as exc:
                cause = exc.cause if isinstance(exc, Unstored) else exc
                self._mishaps.failed(cause)
                if isinstance(cause, TRANSIENT):
                    if self.stopping.is_set() and backoff.longest:
                        log.error("giving up a write while stopping: %s", cause)
                        return False, None
                else:
                    refusals += 1
                    if refusals >= WRITE_TRIES:
                        metrics.WORKER_UNSTORED.labels(self.model, kind).inc()
                        return False, None
                await backoff.wait()

    async def acknowledge(self, entries: list[tuple[str, bytes]]) -> None:
        """XACK + XDEL: the entries are done (answered, or nobody waits for them). Where that
        fails for good the entry stays pending; its answer is stored, so a rerun is dropped."""

        async def ack() -> list[Any]:
            pipe = self.redis.pipeline(transaction=False)
            _acknowledge(pipe, entries)
            return list(await pipe.execute())

        await self._persist(ack, "ack")

    async def finish_silently(self, stream: str, stream_id: bytes) -> None:
        """Acknowledge and delete an entry nobody waits for any more."""
        await self.acknowledge([(stream, stream_id)])

    async def dead_letter(
        self, stream: str, stream_id: bytes, payload: bytes, reason: str, job: wire.Job | None
    ) -> bool:
        """Move an entry to the dead-letter stream and tell its caller, if known; its span records
        why. False where Redis refused to store it: the entry is handed back, not acknowledged."""
        log.warning("dead-lettering %s of model %s: %s", stream_id, self.model, reason)
        chunk = None
        if job is not None and job.job_id:
            entry = Entry(stream_id, job, stream, payload, [], False, bulk=True)
            chunk = self._chunk(entry, f"dead-lettered: {reason}")
        steps: list[str] = ["dead", "answer"] if job is not None else ["dead"]
        trimmed = 0

        async def write() -> None:
            nonlocal trimmed
            # Step by step, so a retry does not write a second dead letter.
            if "dead" in steps:
                fields = [self.max_dead_letters, payload, reason, stream_id, self.worker]
                trimmed = int(await self._dead(keys=[keys.dead_letters(self.model)], args=fields))
                steps.remove("dead")
            if "answer" in steps and chunk is not None:
                await self.jobs.record(chunk)
            elif "answer" in steps and job is not None:
                reply = wire.Reply(
                    job.id,
                    worker=self.worker,
                    error_code=Code.INTERNAL.value,
                    error_message=f"request failed on model {self.model} and was dead-lettered: {reason}",
                )
                await self.redis.xadd(job.reply_to, {keys.PAYLOAD: wire.encode_reply(reply)}, nomkstream=True)
            steps.clear()

        stored, _ = await self._persist(write, "dead_letter")
        if "dead" not in steps:
            metrics.DEAD_LETTERED.labels(self.model).inc()
        if trimmed:
            metrics.DEAD_LETTERS_TRIMMED.labels(self.model).inc(trimmed)
        if stored:
            await self.acknowledge([(stream, stream_id)])
        else:
            await self.hand_back([(stream, stream_id)])
        if job is not None:
            spans.record(job, self.model, self.worker, error=f"dead-lettered: {reason}")
        return stored


async def _queue(queued: Any) -> None:
    """Await what queuing a command returned where it is awaitable (a script queued on a pipeline)."""
    if asyncio.iscoroutine(queued) or isinstance(queued, asyncio.Future):
        await queued


def _acknowledge(pipe: Any, entries: list[tuple[str, bytes]]) -> None:
    """Queue XACK + XDEL of each entry on ``pipe``."""
    for stream, stream_id in entries:
        pipe.xack(stream, keys.GROUP, stream_id)
        pipe.xdel(stream, stream_id)
