"""A worker's intake: read the model's streams, decode, refuse, tokenize, pool.

Entries are read with XREADGROUP from the interactive stream and, while the
job pool has room, the bulk stream. Each is decoded (an undecodable one is
dead-lettered), dropped if its caller's deadline passed, tokenized on the prep
thread (while the model thread runs the batch before) and held in the ledger;
then it is refused (answered with an error at once) or pooled for the batch loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from embedstream.workers.batcher import Entry
from embedstream.workers.ledger import Ledger
from embedstream.workers.model import Model, Source, Tokens
from embedstream.workers.outbox import Outbox
from embedstream.workers.pools import Pools

from embedstream import clock, keys, metrics, wire
from embedstream.backoff import Backoff
from embedstream.connections import TRANSIENT
from embedstream.errors import Code
from embedstream.registry import ModelSpec

log = logging.getLogger(__name__)

#: Entries read (or reclaimed) per Redis call.
READ_ENTRIES = 64

#: Stream entries as XREADGROUP and XAUTOCLAIM return them.
Raw = list[tuple[bytes, dict[bytes, bytes]]]


class Intake:
    """Turns stream entries into pooled, tokenized work; ``reply`` answers the refused ones and
    ``recreate`` brings back the consumer groups after Redis lost its data."""

    def __init__(
        self,
        redis: Any,
        spec: ModelSpec,
        model: Model,
        worker: str,
        pools: Pools,
        ledger: Ledger,
        outbox: Outbox,
        stopping: asyncio.Event,
        reply: Callable[[list[Entry]], None],
        recreate: Callable[[], Awaitable[None]],
    ) -> None:
        self.redis = redis
        self.spec = spec
        self.model = model
        self.worker = worker
        self.pools = pools
        self.ledger = ledger
        self.outbox = outbox
        self.stopping = stopping
        self._reply = reply
        self._recreate = recreate
        self.queue = keys.queue(spec.name)
        self.bulk_queue = keys.bulk(spec.name)
        self._prep = ThreadPoolExecutor(1, thread_name_prefix="prep")

    async def run(self) -> None:
        """Read until stopping; ends within one blocking read (1 s) once it is set."""
        pools = self.pools
        backoff = Backoff()
        while not self.stopping.is_set():
            if len(pools.interactive) >= pools.prefetch:
                # Blocking on the bulk stream alone would leave interactive work
                # unread for a whole block once the pool drains: wait for room.
                pools.space.clear()
                await pools.space.wait()
                continue
            streams: dict[Any, Any] = {self.queue: ">"}
            if len(pools.bulk) < pools.prefetch:
                streams[self.bulk_queue] = ">"
            try:
                got = await self.redis.xreadgroup(keys.GROUP, self.worker, streams, count=READ_ENTRIES, block=1000)
                backoff.reset()
            except TRANSIENT as exc:
                log.warning("read failed (%s); retrying", exc)
                await backoff.wait()
                continue
            except Exception as exc:
                if "NOGROUP" in str(exc):  # Redis lost its data: recreate and go on
                    await self._recreate()
                    continue
                raise
            for stream, entries in got or []:
                await self.accept(entries, stream.decode())

    def close(self) -> None:
        """Let go of the prep thread."""
        self._prep.shutdown(wait=False)

    async def accept(self, raw: Raw, stream: str, deliveries: dict[bytes, int] | None = None) -> None:
        """Decode, drop the expired, tokenize on the prep thread, pool the rest."""
        fresh: list[tuple[bytes, bytes, wire.Job]] = []
        now = clock.now_ms()
        for stream_id, fields in raw:
            if self.ledger.holds(stream, stream_id):  # a redelivery of work we still hold
                continue
            payload = fields.get(keys.PAYLOAD.encode(), b"") if fields else b""
            try:
                job = wire.decode_job(payload)
            except wire.WireError as exc:
                await self.outbox.dead_letter(stream, stream_id, payload, f"undecodable: {exc}", None)
                continue
            if now > job.deadline_ms:
                metrics.WORKER_DROPPED.labels(self.spec.name, "expired").inc()
                await self.outbox.finish_silently(stream, stream_id)
                continue
            fresh.append((stream_id, payload, job))
        if not fresh:
            return
        if stream == self.queue:
            self.pools.saw_interactive()
        sources = [source for _, _, job in fresh for source in sources_of(job, self.spec, self.model)]
        loop = asyncio.get_running_loop()
        tokens = await loop.run_in_executor(self._prep, self.model.tokenize, sources)
        start = 0
        for stream_id, payload, job in fresh:
            toks = tokens[start : start + len(job.inputs)]
            start += len(job.inputs)
            for tok in toks:
                tok.task = job.input_type
            normalize = self.model.normalizes if job.normalize is None else job.normalize
            entry = Entry(stream_id, job, stream, payload, toks, normalize, bulk=bool(job.job_id))
            entry.deliveries = (deliveries or {}).get(stream_id, 1)
            self.ledger.hold(entry)
            entry.error = refusal(job, toks, self.spec, self.model)
            if entry.error:
                self._reply([entry])
                continue
            self.pools.add(entry)
            if entry.suspect:
                await self.ledger.charge(entry, running=False)
        metrics.WORKER_QUEUED.labels(self.spec.name).set(self.pools.queued())
        self.pools.wake.set()


def sources_of(job: wire.Job, spec: ModelSpec, model: Model) -> list[Source]:
    """What the model prepares for each input: the prompt prepended to texts;
    (query, document) pairs for rerankers."""
    if model.output == "score":
        return [(job.query, doc) if isinstance(doc, str) else doc for doc in job.inputs]
    prefix = spec.prompts.get(job.prompt, "")
    return [prefix + item if isinstance(item, str) and prefix else item for item in job.inputs]


def refusal(job: wire.Job, toks: list[Tokens], spec: ModelSpec, model: Model) -> tuple[str, str] | None:
    """Why an entry cannot run (checked again here: entries may come from anywhere)."""
    if job.prompt and job.prompt not in spec.prompts:
        return Code.INVALID_ARGUMENT.value, f"prompt_name: model {spec.name} has no prompt {job.prompt!r}"
    if any(o not in spec.offered_outputs for o in job.outputs):
        return Code.INVALID_ARGUMENT.value, f"outputs: model {spec.name} offers {', '.join(spec.offered_outputs)} only"
    if model.output == "score" and not job.query:
        return Code.INVALID_ARGUMENT.value, f"query: model {spec.name} is a rerank model and needs a query"
    for i, tok in enumerate(toks):
        if tok.error:
            return Code.INVALID_ARGUMENT.value, f"inputs[{i}]: {tok.error}"
        if tok.truncated and not job.truncate:
            return (
                Code.INVALID_ARGUMENT.value,
                f"inputs[{i}].text is longer than the {model.max_input_tokens} tokens model "
                f"{spec.name} accepts; shorten it or set truncate=true",
            )
    return None
