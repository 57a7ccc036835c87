"""A worker's intake: read the model's streams, decode, refuse, tokenize, pool.

Entries are read with XREADGROUP from the model's interactive stream and, while
their pools have room, its stream-request and job-chunk streams (``keys.lanes``). Each is decoded (an undecodable one is
dead-lettered), dropped if its caller's deadline passed, tokenized on the prep
thread (while the model thread runs the batch before) and held in the ledger;
then it is refused (answered with an error at once) or pooled for the batch loop.
Tokenize and Decode entries are answered at once from the model's vocabulary
(:mod:`embedstream.workers.textops`), never pooled.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from embedstream import clock, keys, metrics, wire
from embedstream.backoff import Backoff
from embedstream.errors import Code, clip
from embedstream.loops import Mishaps
from embedstream.profile import Profile
from embedstream.registry import ModelSpec, select_prompt
from embedstream.settings import Settings
from embedstream.workers import cached, chunking, media, profiles, textops
from embedstream.workers.batcher import Entry
from embedstream.workers.ledger import Ledger
from embedstream.workers.model import Model, Source, Tokens
from embedstream.workers.outbox import Outbox
from embedstream.workers.pools import Pools

log = logging.getLogger(__name__)

#: Entries read (or reclaimed) per Redis call, from each lane.
READ_ENTRIES = 64
#: How long one read waits for work; while a lane's pool is full (so the read leaves that lane
#: out), reads come this often instead, so the lane is read again soon after its pool drains.
READ_BLOCK_MS = 1000
FULL_LANE_BLOCK_MS = 20
#: For a model that takes video or audio: each entry may hold clips of up to max_video_bytes,
#: decoded into up to max_media_frames frames, so fewer are read at once (a memory bound).
READ_MEDIA_ENTRIES = 8
#: Text up to this many characters in one read is tokenized on the event loop (~0.1 ms):
#: handing it to the prep thread and back costs more than that, mostly on a busy machine.
INLINE_CHARS = 2048

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
        chunk_limits: tuple[int, int] = (256, 2048),
        budget: media.Budget | None = None,
        cache: cached.Cache | None = None,
    ) -> None:
        self.redis = redis
        self.spec = spec
        self.model = model
        self.profile = profiles.describe(spec, model)
        self.worker = worker
        self.pools = pools
        self.ledger = ledger
        self.outbox = outbox
        self.stopping = stopping
        self._reply = reply
        self._recreate = recreate
        #: Chunks allowed per input and per entry (settings max_chunks_per_input / _request).
        self.chunk_limits = chunk_limits
        #: What a video or audio input may become (settings max_video_*, max_audio_*, max_media_frames).
        self.budget = budget or media.Budget.of(Settings())
        self.read_entries = READ_MEDIA_ENTRIES if {"video", "audio"} & set(spec.takes) else READ_ENTRIES
        self.cache = cache
        self.queue = keys.queue(spec.name)
        self._prep = ThreadPoolExecutor(1, thread_name_prefix="prep")

    async def run(self) -> None:
        """Read until stopping; ends within one blocking read (1 s) once it is set."""
        pools = self.pools
        backoff = Backoff()
        mishaps = Mishaps("read")
        while not self.stopping.is_set():
            if len(pools.interactive) >= pools.prefetch:
                # Blocking on the other lanes alone would leave interactive work
                # unread for a whole block once the pool drains: wait for room.
                pools.space.clear()
                await pools.space.wait()
                continue
            streams: dict[Any, Any] = {lane: ">" for lane, pool in pools.lanes.items() if len(pool) < pools.prefetch}
            # A lane left out while its pool is full is read again soon after the pool drains.
            block = READ_BLOCK_MS if len(streams) == len(pools.lanes) else FULL_LANE_BLOCK_MS
            try:
                got = await self.redis.xreadgroup(
                    keys.GROUP, self.worker, streams, count=self.read_entries, block=block
                )
                backoff.reset()
                mishaps.recovered()
                for stream, entries in got or []:
                    await self.accept(entries, stream.decode())
            except Exception as exc:
                if "NOGROUP" in str(exc):  # Redis lost its data: recreate and go on
                    await self._recreate()
                    continue
                mishaps.failed(exc)  # whatever it was, the next read tries again
                await backoff.wait()

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
        if stream == self.queue and fresh:
            self.pools.saw_interactive()
        ops = [item for item in fresh if item[2].kind != "embed"]
        if ops:
            await self._answer_ops(ops, stream, deliveries)
            fresh = [item for item in fresh if item[2].kind == "embed"]
        if not fresh:
            return
        jobs = [job for *_, job in fresh]
        plans: list[cached.Plan | None] = [None] * len(jobs)
        if self.cache is not None:  # before tokenizing: hits are never tokenized (media entries: never used)
            plans = await self.cache.lookup(jobs, [prompt_of(job, self.profile) for job in jobs])
        rests = [cached.rest(job, plan) for job, plan in zip(jobs, plans)]
        work = [(job, sources_of(job, self.profile, self.model), prompt_of(job, self.profile)) for job in rests if job]
        prepare: Callable[[], list[Any]] = functools.partial(chunking.prepare, self.model, work, *self.chunk_limits)
        if any(media.has_media(job) for job, _, _ in work):
            prepare = functools.partial(media.prepare_all, self.model, work, self.chunk_limits, self.budget)
        if not any(job.chunking or job.kinds for job, _, _ in work) and _small([s for _, s_, _ in work for s in s_]):
            prepared = iter(prepare())
        else:
            running = asyncio.get_running_loop().run_in_executor(self._prep, prepare)
            prepared = iter(await self.ledger.leased_while(stream, [stream_id for stream_id, *_ in fresh], running))
        for (stream_id, payload, job), plan, rest in zip(fresh, plans, rests):
            (toks, layout, chunk_error), results = cached.merge(job, plan, next(prepared) if rest else None)
            prompt = select_prompt(self.profile, job.input_type, job.prompt)
            for tok in toks:
                tok.task = job.input_type
                tok.dimensions = job.dimensions
                tok.prompt = prompt
            normalize = self.model.normalizes if job.normalize is None else job.normalize
            entry = Entry(stream_id, job, stream, payload, toks, normalize, bulk=bool(job.job_id))
            entry.deliveries = (deliveries or {}).get(stream_id, 1)
            if isinstance(layout, media.Layout):
                entry.media = layout
            else:
                entry.chunks = layout
            entry.cache, entry.results, entry.cached = plan, results, plan.found if plan else 0
            self.ledger.hold(entry)
            entry.error = chunk_error or refusal(job, toks, self.spec, self.model, self.profile)
            if entry.error or rest is None:  # refused, or every input came from the cache
                entry.started_ms = 0.0 if entry.error else clock.now_ms()
                self._reply([entry])
                continue
            self.pools.add(entry)
            if entry.suspect:
                await self.ledger.charge(entry, running=False)
        metrics.WORKER_QUEUED.labels(self.spec.name).set(self.pools.queued())
        self.pools.wake.set()

    async def _answer_ops(
        self, ops: list[tuple[bytes, bytes, wire.Job]], stream: str, deliveries: dict[bytes, int] | None
    ) -> None:
        """Answer Tokenize and Decode entries from the vocabulary (on the prep thread when large)."""

        def run() -> list[textops.Answer]:
            return [textops.answer(self.model, job) for *_, job in ops]

        if _small([s for *_, job in ops for s in job.inputs]):
            answers = run()
        else:
            answers = await asyncio.get_running_loop().run_in_executor(self._prep, run)
        entries = []
        for (stream_id, payload, job), (results, error) in zip(ops, answers):
            entry = Entry(stream_id, job, stream, payload, [], False)
            entry.deliveries = (deliveries or {}).get(stream_id, 1)
            entry.results, entry.error = results, error
            self.ledger.hold(entry)
            entries.append(entry)
        self._reply(entries)


def _small(sources: list[Source]) -> bool:
    """Text only, and little of it: cheaper to tokenize here than to hand to the prep thread."""
    size = 0
    for source in sources:
        if isinstance(source, bytes):
            return False
        size += len(source) if isinstance(source, str | list) else len(source[0]) + len(source[1])
        if size > INLINE_CHARS:
            return False
    return True


def sources_of(job: wire.Job, profile: Profile, model: Model) -> list[Source]:
    """What the model prepares for each input: the prompt prepended to texts (the one the job
    names, else the model's own for its input type); (query, document) pairs for rerankers."""
    if model.output == "score":
        return [(job.query, doc) if isinstance(doc, str) else doc for doc in job.inputs]
    prefix = prompt_of(job, profile)
    return [prefix + item if isinstance(item, str) and prefix else item for item in job.inputs]


def prompt_of(job: wire.Job, profile: Profile) -> str:
    """The prompt prepended to the job's texts: the one it names, else the model's own for its input type."""
    return profile.prompts.get(select_prompt(profile, job.input_type, job.prompt), "")


def refusal(
    job: wire.Job, toks: list[Tokens], spec: ModelSpec, model: Model, profile: Profile
) -> tuple[str, str] | None:
    """Why an entry cannot run (checked again here: entries may come from anywhere)."""
    if job.prompt and job.prompt not in profile.prompts:
        return Code.INVALID_ARGUMENT.value, f"prompt_name: model {spec.name} has no prompt {clip(job.prompt)}"
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
