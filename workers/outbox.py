"""Everything a worker writes back to Redis: replies, job results, acks, dead letters.

An entry is never acknowledged unless its answer (a reply, a job result, a dead letter)
is stored. On one Redis each answer and its entry's XACK + XDEL are one script
(:mod:`embedstream.workers.scripts`): an answered entry leaves its stream at once, and a
refused script stored nothing and acknowledged nothing. In a Redis Cluster, where the
answer and the entry live in different slots, the answers are written first, each reply
read, and only the entries whose answer Redis took are acknowledged. An answer Redis
refuses (full under ``maxmemory``, a command its ACL denies) is retried a few times;
then the entry is handed back to the group unacknowledged, its delivery count restored
(the refusal was not its fault), and a reclaim scan runs it again. While Redis is
unreachable nothing can be handed back, so writes are retried until it returns (or the
worker stops, leaving the entry pending to be reclaimed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio.cluster import RedisCluster

from embedstream import jobstore, keys, metrics, replywire, wire
from embedstream.backoff import Backoff
from embedstream.connections import REDIS_ERRORS, TRANSIENT
from embedstream.errors import Code
from embedstream.loops import Mishaps
from embedstream.registry import ModelSpec
from embedstream.workers import finish, scripts, spans
from embedstream.workers.batcher import Entry

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Tries of a write Redis refuses (rather than fails to reach) before its entry is handed back.
WRITE_TRIES = 5

#: An answer's kind ("reply" or "record", as in :data:`scripts.ANSWERED`) and its keys and arguments.
Answer = tuple[str, jobstore.Call]


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
        self._answered = {kind: redis.register_script(lua) for kind, lua in scripts.ANSWERED.items()}
        self._dead = {kind: redis.register_script(lua) for kind, lua in scripts.DEAD_LETTERED.items()}
        self._dead_alone = redis.register_script(scripts.DEAD_LETTER)
        self._hand_back = redis.register_script(scripts.HAND_BACK)
        self.cluster = isinstance(redis, RedisCluster)
        self.max_dead_letters = max_dead_letters
        self.visibility_timeout_s = visibility_timeout_s
        self._mishaps = Mishaps("storing answers")

    async def deliver(self, entries: list[Entry]) -> list[Entry]:
        """Store every reply and job result and acknowledge (XACK + XDEL) the entries whose
        answer is stored. Returns the entries whose answer Redis kept refusing: the caller
        stops holding them and :meth:`hand_back` gives them to the group, unacknowledged."""
        pending = {i: (entry, self._answer(entry)) for i, entry in enumerate(entries)}
        stored: list[Entry] = []

        async def write() -> None:
            order = list(pending)
            answers = [pending[i] for i in order]
            outcomes = await (self._store_in_cluster(answers) if self.cluster else self._store_and_ack(answers))
            failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
            for i, outcome in zip(order, outcomes, strict=True):
                if not isinstance(outcome, BaseException):
                    stored.append(pending.pop(i)[0])
            if failures:
                raise Unstored(failures[0])

        await self._persist(write, "answer")
        if self.cluster and stored:
            await self.acknowledge([(e.stream, e.stream_id) for e in stored])
        return [entry for entry, _ in pending.values()]

    async def _store_and_ack(self, answers: list[tuple[Entry, Answer]]) -> list[Any]:
        """One Redis: one pipeline of scripts, each storing an answer and acknowledging its
        entry (one outcome per answer, a refusal as its exception)."""
        pipe = self.redis.pipeline(transaction=False)
        for entry, (kind, (names, args)) in answers:
            script = self._answered[kind]
            await _queue(script(keys=[*names, entry.stream], args=[*args, keys.GROUP, entry.stream_id], client=pipe))
        return list(await pipe.execute(raise_on_error=False))

    async def _store_in_cluster(self, answers: list[tuple[Entry, Answer]]) -> list[Any]:
        """A Redis Cluster: the answers alone (no acknowledgement: a refused one must leave its
        entry pending). A Cluster pipeline takes no scripts: job results are recorded one by one."""
        pipe = self.redis.pipeline(transaction=False)
        outcomes: dict[int, Any] = {}
        for n, (_, answer) in enumerate(answers):
            if answer[0] == "record":
                try:
                    outcomes[n] = await self._store(answer, self.redis)
                except REDIS_ERRORS as exc:
                    outcomes[n] = exc
            else:
                self._store(answer, pipe)
        piped = [n for n in range(len(answers)) if n not in outcomes]
        if piped:
            outcomes.update(zip(piped, await pipe.execute(raise_on_error=False), strict=True))
        return [outcomes[n] for n in range(len(answers))]

    def _store(self, answer: Answer, client: Any) -> Any:
        """Store ``answer`` alone through ``client`` (an awaitable, or queued on a pipeline)."""
        kind, (names, args) = answer
        if kind == "record":
            return self.jobs.record((names, args), client=client)
        return client.xadd(names[0], {keys.PAYLOAD: args[0]}, nomkstream=True)

    def _answer(self, entry: Entry) -> Answer:
        """What stores ``entry``'s answer: its job chunk's result, or its reply. Built once, so a
        retried write sends the same bytes."""
        if entry.bulk:
            return "record", self._chunk(entry)
        return "reply", ([entry.job.reply_to], [replywire.encode_reply(self.answer(entry))])

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

    def answer(self, entry: Entry) -> replywire.Reply:
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
        tell: Answer | None = None
        if job is not None and job.job_id:
            entry = Entry(stream_id, job, stream, payload, [], False, bulk=True)
            tell = ("record", self._chunk(entry, f"dead-lettered: {reason}"))
        elif job is not None:
            reply = replywire.Reply(
                job.id,
                worker=self.worker,
                error_code=Code.INTERNAL.value,
                error_message=f"request failed on model {self.model} and was dead-lettered: {reason}",
            )
            tell = ("reply", ([job.reply_to], [replywire.encode_reply(reply)]))
        dead_keys = [keys.dead_letters(self.model), stream]
        dead_args = [self.max_dead_letters, payload, reason, stream_id, self.worker, keys.GROUP, stream_id]
        steps: set[str] = set()
        trimmed = 0

        async def write() -> None:
            nonlocal trimmed
            if tell is None or not self.cluster:
                # One script: the caller's answer (if any), the dead letter, the acknowledgement.
                kind, (names, args) = tell if tell is not None else (None, ([], []))
                done = await self._dead[kind](keys=[*names, *dead_keys], args=[*args, *dead_args])
                trimmed = int(done[-2])  # the DEAD step's result; ACK's is last
                return
            # A Cluster, where the caller's answer lives in another slot: the dead letter first (a
            # caller told its request was dead-lettered finds it there), then the answer, then the
            # acknowledgement. Step by step, so a retry writes nothing twice; an entry handed back
            # after its dead letter was written gets a second one when it is run again.
            if "dead" not in steps:
                trimmed = int((await self._dead_alone(keys=dead_keys[:1], args=dead_args[:5]))[0])
                steps.add("dead")
            if "told" not in steps:
                await self._store(tell, self.redis)
                steps.add("told")
            pipe = self.redis.pipeline(transaction=False)
            _acknowledge(pipe, [(stream, stream_id)])
            await pipe.execute()

        stored, _ = await self._persist(write, "dead_letter")
        if stored or "dead" in steps:
            metrics.DEAD_LETTERED.labels(self.model).inc()
            if trimmed:
                metrics.DEAD_LETTERS_TRIMMED.labels(self.model).inc(trimmed)
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
