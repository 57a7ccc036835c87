"""The embedding cache on the worker: look up what was just read, answer hits without the model,
store what the model computed once its answer is out.

Intake asks :meth:`Cache.lookup` for the inputs of every entry of one read in one round trip,
before anything is tokenized; an entry runs only its missing inputs (:func:`rest`) and gets the
hits back in place (:func:`merge`). A record holds what the model computed for an input (every
chunk of it, when chunked), and the reply is finished from it exactly as from a forward pass, so
a hit's bytes are a miss's. After the answer is stored, :meth:`Cache.store` writes the misses in
one pipeline; a failed or refused write is counted and forgotten. The records and their budget
are :mod:`embedstream.cache`'s; docs/cache.md says how it behaves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.cluster import RedisCluster

from embedstream import cache, clock, metrics, wire
from embedstream.connections import REDIS_ERRORS
from embedstream.loops import Mishaps
from embedstream.profile import Profile
from embedstream.registry import ModelSpec
from embedstream.settings import Settings
from embedstream.workers.batcher import Entry
from embedstream.workers.chunking import Layout, Prepared, Span
from embedstream.workers.model import Model, Tokens

log = logging.getLogger(__name__)
_INPUT = re.compile(r"^inputs\[(\d+)\]")


@dataclass(slots=True)
class Plan:
    """One entry's cache keys, what the lookup found for each input, and whether to store."""

    digests: list[str]
    #: Per input: its parts from the cache, or None (not found, or not looked up).
    hits: list[list[cache.Part] | None] = field(default_factory=list)

    @property
    def missing(self) -> list[int]:
        """Inputs the model still has to run."""
        return [i for i, parts in enumerate(self.hits) if parts is None]

    @property
    def found(self) -> int:
        """Inputs answered from the cache."""
        return sum(parts is not None for parts in self.hits)


class Cache:
    """One worker's reads and writes of its model's cache; off when the budget or TTL is 0."""

    def __init__(self, redis: Any, spec: ModelSpec, model: Model, served: Profile, settings: Settings) -> None:
        # A model of several outputs (BGE-M3) has no record layout yet: it always runs.
        self.on = settings.cache_bytes > 0 and settings.cache_ttl_s > 0 and model.output != "outputs"
        self.name = spec.name
        self.kind = model.output
        self.normalizes = model.normalizes
        self.store_ = cache.Store(redis, spec.name, settings.cache_bytes, settings.cache_ttl_s * 1000)
        self.redis = redis
        self.cluster = isinstance(redis, RedisCluster)
        #: Computed once at load: every key carries it, so new weights never meet old records.
        self.fingerprint = cache.fingerprint(spec, served) if self.on else ""
        self._mishaps = Mishaps("embedding cache")

    def plan(self, job: wire.Job, prompt: str) -> Plan | None:
        """The keys of ``job``'s inputs; None where it does not use the cache. An entry holding
        video or audio never does: its vectors depend on the media options and its outputs are
        segments, not one record per input."""
        if not self.on or job.cache == "bypass" or job.kinds:
            return None
        normalize = self.normalizes if job.normalize is None else job.normalize
        digests = [cache.digest(self.fingerprint, job, normalize, prompt, item) for item in job.inputs]
        return Plan(digests, [None] * len(digests))

    async def lookup(self, jobs: list[wire.Job], prompts: list[str]) -> list[Plan | None]:
        """Each job's plan, with what the cache holds for the jobs that read it: one round trip.
        Where Redis cannot answer, everything is a miss (counted, never an error)."""
        plans = [self.plan(job, prompt) for job, prompt in zip(jobs, prompts)]
        reading = [p for p, job in zip(plans, jobs) if p is not None and job.cache == ""]
        digests = [d for p in reading for d in p.digests]
        if not digests:
            return plans
        try:
            found = await self.store_.get(digests, int(clock.now_ms()))
        except REDIS_ERRORS as exc:
            self._failed("read", exc, len(digests))
            found = [None] * len(digests)
        at = 0
        for p in reading:
            for i in range(len(p.digests)):
                value = found[at]
                at += 1
                p.hits[i] = None if value is None else cache.decode_record(value, self.kind)
        hits = sum(p.found for p in reading)
        metrics.CACHE_HITS.labels(self.name).inc(hits)
        metrics.CACHE_MISSES.labels(self.name).inc(len(digests) - hits)
        return plans

    async def store(self, entries: list[Entry]) -> None:
        """Write the records of the answered entries' missing inputs, one pipeline, after their
        answers; whatever Redis refuses is counted (``embedstream_cache_failures_total``) and dropped."""
        writes = [(entry.cache.digests[i], value) for entry in entries for i, value in self.records(entry)]
        if not writes:
            return
        now = int(clock.now_ms())
        outcomes: list[Any] = []
        try:
            if self.cluster:  # a Cluster pipeline takes no scripts
                for digest, value in writes:
                    try:
                        outcomes.append(await self.store_.put(digest, value, now))
                    except REDIS_ERRORS as exc:
                        outcomes.append(exc)
            else:
                pipe = self.redis.pipeline(transaction=False)
                for digest, value in writes:
                    queued = self.store_.put(digest, value, now, client=pipe)
                    if asyncio.iscoroutine(queued):
                        await queued
                outcomes = list(await pipe.execute(raise_on_error=False))
        except REDIS_ERRORS as exc:
            self._failed("write", exc, len(writes))
            return
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:
            self._failed("write", failed[0], len(failed))
        else:
            self._mishaps.recovered()
        for (_, value), outcome in zip(writes, outcomes):
            if not isinstance(outcome, BaseException):
                evicted, total, stored = (int(x) for x in outcome)
                if stored:
                    metrics.CACHE_STORED_BYTES.labels(self.name).inc(len(value) + cache.OVERHEAD)
                else:  # Redis is nearly full: the cache gave memory back instead
                    metrics.CACHE_FAILURES.labels(self.name, "full").inc()
                metrics.CACHE_EVICTIONS.labels(self.name).inc(evicted)
                metrics.CACHE_BYTES.labels(self.name).set(total)

    def records(self, entry: Entry) -> list[tuple[int, bytes]]:
        """(input, record) of each input of a finished entry that the model ran for it."""
        plan: Plan | None = entry.cache
        if plan is None or entry.error or len(entry.results) != len(entry.tokens):
            return []
        parts: dict[int, list[cache.Part]] = {i: [] for i in plan.missing}
        spans: list[Span | None] = list(entry.chunks.spans) if entry.chunks is not None else [None] * len(entry.tokens)
        for k, (tok, output, span) in enumerate(zip(entry.tokens, entry.results, spans)):
            i = k if span is None else span.input
            if i in parts:
                where = None if span is None else (span.token_start, span.token_end, span.char_start, span.char_end)
                parts[i].append(cache.Part(output, tok.length, tok.truncated, where))
        return [(i, cache.encode_record(self.kind, p)) for i, p in parts.items() if p]

    def _failed(self, op: str, exc: BaseException, count: int) -> None:
        metrics.CACHE_FAILURES.labels(self.name, op).inc(count)
        self._mishaps.failed(exc)


def rest(job: wire.Job, plan: Plan | None) -> wire.Job | None:
    """``job`` with only the inputs the model still has to run; None when the cache had them all."""
    if plan is None or not plan.found:
        return job
    missing = plan.missing
    return dataclasses.replace(job, inputs=[job.inputs[i] for i in missing]) if missing else None


def merge(job: wire.Job, plan: Plan | None, prepared: Prepared | None) -> tuple[Prepared, list[Any]]:
    """The entry's tokens, chunk layout and refusal with the cache's hits back in place, and its
    results so far (the hits' outputs; None for each model input still to run; [] with no hits)."""
    if plan is None or not plan.found:
        assert prepared is not None
        return prepared, []
    missing = plan.missing
    toks_m, layout_m, error = prepared if prepared is not None else ([], None, None)
    if error is not None:
        code, message = error
        renumbered = _INPUT.sub(lambda m: f"inputs[{missing[int(m.group(1))]}]", message)
        return ([], None, (code, renumbered)), []
    # The model inputs of the inputs the cache lacked, by their input's place in ``job``.
    runs: dict[int, list[tuple[Tokens, Span | None]]] = {i: [] for i in missing}
    spans_m: list[Span | None] = list(layout_m.spans) if layout_m is not None else [None] * len(toks_m)
    for k, (tok, span) in enumerate(zip(toks_m, spans_m)):
        runs[missing[k if span is None else span.input]].append((tok, span))
    toks: list[Tokens] = []
    results: list[Any] = []
    spans: list[Span] = []
    for i, parts in enumerate(plan.hits):
        if parts is not None:
            for part in parts:
                toks.append(Tokens(None, part.length, part.truncated, ""))
                results.append(part.output)
                if part.span is not None:
                    spans.append(Span(i, *part.span))
            continue
        for tok, span in runs[i]:
            toks.append(tok)
            results.append(None)
            if span is not None:
                spans.append(dataclasses.replace(span, input=i))
    layout = Layout(spans, len(job.inputs)) if job.chunking else None
    return (toks, layout, None), results
