"""One worker process for one model: consume, batch, run, reply, recover.

Three lanes overlap: the event loop reads Redis, renews leases, reclaims and
replies; a prep thread tokenizes what was just read; a model thread runs the
forward pass. Replies are written before XACK, so a crash at any point leaves
the entry pending for another worker, and the gateway drops a second answer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from embedstream.workers import finish, spans
from embedstream.workers.batcher import PADDING_FACTOR, Batcher, Entry, Item, complete
from embedstream.workers.model import Model, Source, Tokens
from embedstream.workers.outbox import Outbox, now_ms
from embedstream.workers.recovery import READ_ENTRIES, RENEW, Recovery

from embedstream import jobstore, keys, metrics, tracing, wire
from embedstream.connections import TRANSIENT, connect, stop_tasks
from embedstream.errors import Code
from embedstream.registry import ModelSpec
from embedstream.settings import Settings

log = logging.getLogger(__name__)

#: While interactive calls arrive (seen within this many seconds), job chunks run
#: in batches cut to a fraction of the budget, so a call never waits behind a
#: long bulk batch: a forward pass cannot be interrupted once started.
INTERACTIVE_RECENT_S = 2.0
BULK_SHARE = {"cpu": 16, "accelerator": 4}
#: Exit status of a worker whose forward pass outlived ``batch_timeout_s``.
EXIT_HUNG = 75


class Worker(Recovery):
    """Serves one model from its Redis stream until stopped."""

    def __init__(self, spec: ModelSpec, model: Model, settings: Settings, name: str = "") -> None:
        self.spec = spec
        self.model = model
        self.settings = settings
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.queue = keys.queue(spec.name)
        self.bulk_queue = keys.bulk(spec.name)
        padding = PADDING_FACTOR if spec.device == "cpu" else 0.0
        # Interactive work and async-job chunks wait in separate pools; a batch
        # is cut from the job pool only when no interactive input waits.
        self.batcher = Batcher(spec.max_batch_tokens, spec.max_batch_size, padding)
        self.bulk = Batcher(spec.max_batch_tokens, spec.max_batch_size, padding)
        # Redelivered entries run alone, one entry at a time, in a pool of their own.
        self.isolated = Batcher(spec.max_batch_tokens, spec.max_batch_size, padding)
        self._suspects: deque[Entry] = deque()
        #: (monotonic start, paused seconds at start) of the forward pass running now.
        self._forward_since: tuple[float, float] | None = None
        #: Seconds this process was stopped (SIGSTOP, a VM pause): not the model's time.
        self._paused_s = 0.0
        self.prefetch = max(settings.prefetch_inputs, spec.max_batch_size)
        share = BULK_SHARE["cpu" if spec.device == "cpu" else "accelerator"]
        self._bulk_limits = (max(64, spec.max_batch_tokens // share), max(1, spec.max_batch_size // share))
        self._interactive_seen = -INTERACTIVE_RECENT_S
        self._held: dict[tuple[str, bytes], Entry] = {}
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._stopping = asyncio.Event()
        self._replies: set[asyncio.Task[None]] = set()
        self._prep = ThreadPoolExecutor(1, thread_name_prefix="prep")
        self._compute = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.redis = connect(settings.redis_url, settings.redis_timeout_s, block_s=1.0)
        self.outbox = Outbox(self.redis, spec, model, self.name, self._stopping, settings.max_dead_letters)
        self._renew = self.redis.register_script(RENEW)

    async def run(self) -> None:
        """Serve until :meth:`stop`; then finish the batch in the model and hand the rest back."""
        await self._until_redis(self._setup)
        log.info("worker %s serving model %s from %s", self.name, self.spec.name, self.queue)
        reader = asyncio.create_task(self._read_loop(), name="read")
        background = [
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._reclaim_loop(), name="reclaim"),
        ]
        try:
            await self._batch_loop()
        finally:
            # The read loop ends by itself within one blocking read (1 s) once stopping is set.
            await stop_tasks([reader], grace_s=3.0)
            await stop_tasks(background)
            if self._replies:
                await asyncio.gather(*self._replies, return_exceptions=True)
            try:
                await self.redis.zrem(keys.workers(self.spec.name), self.name)
                await self._hand_back()
            except TRANSIENT as exc:
                log.warning("could not hand back pending entries (%s); they are reclaimed after the timeout", exc)
            await self.redis.aclose()
            self._prep.shutdown(wait=False)
            self._compute.shutdown(wait=True)
            log.info("worker %s stopped", self.name)

    def stop(self) -> None:
        """Stop reading; the batch in the model finishes, then run() hands back the rest and returns."""
        self._stopping.set()
        self._wake.set()
        self._space.set()

    async def _setup(self) -> None:
        for stream in (self.queue, self.bulk_queue):
            try:
                await self.redis.xgroup_create(stream, keys.GROUP, id="0", mkstream=True)
            except Exception as exc:  # BUSYGROUP: another worker made it first
                if "BUSYGROUP" not in str(exc):
                    raise
        await self._heartbeat()

    async def _heartbeat(self) -> None:
        info: dict[str | bytes, str | bytes | int | float] = {
            "family": self.model.family,
            "output": self.model.output,
            "dimensions": self.model.dimensions,
            "max_input_tokens": self.model.max_input_tokens,
            "normalizes": int(self.model.normalizes),
        }
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(keys.workers(self.spec.name), {self.name: now_ms()})
        pipe.zremrangebyscore(keys.workers(self.spec.name), 0, now_ms() - 60_000)
        pipe.hset(keys.model_info(self.spec.name), mapping=info)
        await pipe.execute()

    async def _until_redis(self, action: Any) -> None:
        delay = 0.05
        while not self._stopping.is_set():
            try:
                await action()
                return
            except TRANSIENT as exc:
                log.warning("redis unreachable (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    # -- reading -----------------------------------------------------------

    async def _read_loop(self) -> None:
        delay = 0.05
        while not self._stopping.is_set():
            if len(self.batcher) >= self.prefetch:
                # Blocking on the bulk stream alone would leave interactive work
                # unread for a whole block once the pool drains: wait for room.
                self._space.clear()
                await self._space.wait()
                continue
            streams: dict[Any, Any] = {self.queue: ">"}
            if len(self.bulk) < self.prefetch:
                streams[self.bulk_queue] = ">"
            try:
                got = await self.redis.xreadgroup(keys.GROUP, self.name, streams, count=READ_ENTRIES, block=1000)
                delay = 0.05
            except TRANSIENT as exc:
                log.warning("read failed (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            except Exception as exc:
                if "NOGROUP" in str(exc):  # Redis lost its data: recreate and go on
                    await self._until_redis(self._setup)
                    continue
                raise
            for stream, entries in got or []:
                await self._accept(entries, stream.decode())

    async def _accept(
        self, raw: list[tuple[bytes, dict[bytes, bytes]]], stream: str, deliveries: dict[bytes, int] | None = None
    ) -> None:
        """Decode, drop the expired, tokenize on the prep thread, pool the rest."""
        fresh: list[tuple[bytes, bytes, wire.Job]] = []
        now = now_ms()
        for stream_id, fields in raw:
            if (stream, stream_id) in self._held:  # a redelivery of work we still hold
                continue
            payload = fields.get(keys.PAYLOAD.encode(), b"") if fields else b""
            try:
                job = wire.decode_job(payload)
            except wire.WireError as exc:
                await self._dead_letter(stream, stream_id, payload, f"undecodable: {exc}", None)
                continue
            if now > job.deadline_ms:
                metrics.WORKER_DROPPED.labels(self.spec.name, "expired").inc()
                await self._finish_silently(stream, stream_id)
                continue
            fresh.append((stream_id, payload, job))
        if not fresh:
            return
        if stream == self.queue:
            self._interactive_seen = time.monotonic()
        sources = [source for _, _, job in fresh for source in self._sources(job)]
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
            self._held[(stream, stream_id)] = entry
            entry.error = self._refusal(job, toks)
            if entry.error:
                self._reply_soon([entry])
            elif entry.suspect:
                self._suspects.append(entry)
                await self._charge(entry, running=False)
            else:
                self._pool(entry).add(entry)
        metrics.WORKER_QUEUED.labels(self.spec.name).set(
            len(self.batcher) + len(self.bulk) + self._backlog(self.isolated)
        )
        self._wake.set()

    def _sources(self, job: wire.Job) -> list[Source]:
        """What the model prepares for each input: the prompt prepended to texts;
        (query, document) pairs for rerankers."""
        if self.model.output == "score":
            return [(job.query, doc) if isinstance(doc, str) else doc for doc in job.inputs]
        prefix = self.spec.prompts.get(job.prompt, "")
        return [prefix + item if isinstance(item, str) and prefix else item for item in job.inputs]

    def _refusal(self, job: wire.Job, toks: list[Tokens]) -> tuple[str, str] | None:
        """Why an entry cannot run (checked again here: entries may come from anywhere)."""
        if job.prompt and job.prompt not in self.spec.prompts:
            return Code.INVALID_ARGUMENT.value, f"prompt_name: model {self.spec.name} has no prompt {job.prompt!r}"
        offered = self.spec.offered_outputs
        if any(o not in offered for o in job.outputs):
            return Code.INVALID_ARGUMENT.value, f"outputs: model {self.spec.name} offers {', '.join(offered)} only"
        if self.model.output == "score" and not job.query:
            return Code.INVALID_ARGUMENT.value, f"query: model {self.spec.name} is a rerank model and needs a query"
        for i, tok in enumerate(toks):
            if tok.error:
                return Code.INVALID_ARGUMENT.value, f"inputs[{i}]: {tok.error}"
            if tok.truncated and not job.truncate:
                return (
                    Code.INVALID_ARGUMENT.value,
                    f"inputs[{i}].text is longer than the {self.model.max_input_tokens} tokens model "
                    f"{self.spec.name} accepts; shorten it or set truncate=true",
                )
        return None

    # -- batching and compute ----------------------------------------------

    def _pool(self, entry: Entry) -> Batcher:
        if entry.suspect:
            return self.isolated
        return self.bulk if entry.bulk else self.batcher

    async def _next_pool(self) -> Batcher:
        """Suspects first (one entry at a time), then interactive work, then job chunks."""
        if not len(self.isolated) and self._suspects:
            entry = self._suspects.popleft()
            await self._charge(entry, running=True)
            self.isolated.add(entry)
        if len(self.isolated):
            return self.isolated
        return self.batcher if len(self.batcher) else self.bulk

    async def _batch_loop(self) -> None:
        wait_s = self.settings.max_wait_ms / 1000.0
        while not self._stopping.is_set():
            pool = await self._next_pool()
            if not len(pool):
                self._wake.clear()
                await self._wake.wait()
                continue
            if wait_s and pool is not self.isolated and not pool.full():
                # The model is idle and the pool holds less than a batch: give
                # inputs that are already on their way a moment to join.
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), wait_s)
                except TimeoutError:
                    pass
                if self._stopping.is_set():
                    return
            limits = (0, 0)
            if pool is self.bulk and time.monotonic() - self._interactive_seen < INTERACTIVE_RECENT_S:
                limits = self._bulk_limits
            batch = await self._live(pool.take(*limits))
            self._space.set()
            if not batch:
                continue
            started = now_ms()
            for item in batch:
                if not item.entry.started_ms:
                    item.entry.started_ms = started
                item.entry.batch_inputs = max(item.entry.batch_inputs, len(batch))
            t0 = time.perf_counter()
            try:
                vectors = await self._forward(batch)
            except Exception:
                log.exception("model %s failed on a batch of %d", self.spec.name, len(batch))
                await self._isolate(batch)
                continue
            elapsed = (time.perf_counter() - t0) * 1000.0
            metrics.BATCH_SIZE.labels(self.spec.name).observe(len(batch))
            metrics.BATCH_TOKENS.labels(self.spec.name).observe(sum(it.length for it in batch))
            metrics.INFERENCE_SECONDS.labels(self.spec.name).observe(elapsed / 1000.0)
            batch, vectors = await self._refuse_nonfinite(batch, vectors)
            self._reply_soon(complete(batch, vectors, elapsed))

    async def _forward(self, batch: list[Item]) -> Any:
        """Run the model on the model thread; the heartbeat watches how long it takes."""

        def run() -> Any:
            self._forward_since = (time.monotonic(), self._paused_s)
            try:
                return self.model.forward(
                    [it.entry.tokens[it.index] for it in batch], [it.entry.normalize for it in batch]
                )
            finally:
                self._forward_since = None

        return await asyncio.get_running_loop().run_in_executor(self._compute, run)

    async def _refuse_nonfinite(self, batch: list[Item], outputs: Any) -> tuple[list[Item], Any]:
        """Fail (and dead-letter) the entries whose outputs hold NaN or Inf; keep the rest."""
        rows = finish.nonfinite(self.model.output, outputs)
        if not rows:
            return batch, outputs
        bad = {id(batch[i].entry): batch[i] for i in rows}
        for item in bad.values():
            entry = item.entry
            metrics.NON_FINITE.labels(self.spec.name).inc()
            self._pool(entry).drop(entry)
            if self._held.pop((entry.stream, entry.stream_id), None) is not None:
                reason = f"model output for inputs[{item.index}] holds NaN or Inf"
                await self._dead_letter(entry.stream, entry.stream_id, entry.payload, reason, entry.job)
        keep = [i for i, it in enumerate(batch) if id(it.entry) not in bad]
        kept = outputs[keep] if isinstance(outputs, np.ndarray) else [outputs[i] for i in keep]
        return [batch[i] for i in keep], kept

    async def _live(self, batch: list[Item]) -> list[Item]:
        """Drop inputs whose caller is gone: deadline passed, the gateway withdrew
        the entry (XDEL on cancel or timeout), or its job was cancelled or expired.
        One pipelined XRANGE (or HGET of the job's state) per entry."""
        entries = list({id(it.entry): it.entry for it in batch}.values())
        now = now_ms()
        gone: dict[int, str] = {e_id: "expired" for e_id, e in ((id(e), e) for e in entries) if e.expired(now)}
        unchecked = [e for e in entries if id(e) not in gone]
        if unchecked:
            pipe = self.redis.pipeline(transaction=False)
            for entry in unchecked:
                if entry.bulk:
                    pipe.hget(keys.job_meta(entry.job.job_id), "state")
                else:
                    pipe.xrange(entry.stream, entry.stream_id, entry.stream_id)
            try:
                found = await pipe.execute()
            except TRANSIENT:
                found = [b"1"] * len(unchecked)  # cannot tell: do the work
            cancelled = str(jobstore.CANCELLED).encode()
            gone.update({id(e): "cancelled" for e, rows in zip(unchecked, found) if not rows or rows == cancelled})
        if not gone:
            return batch
        for entry in entries:
            reason = gone.get(id(entry))
            if reason is None or (entry.stream, entry.stream_id) not in self._held:
                continue
            self._pool(entry).drop(entry)
            del self._held[(entry.stream, entry.stream_id)]
            metrics.WORKER_DROPPED.labels(self.spec.name, reason).inc()
            self._track(asyncio.ensure_future(self._finish_silently(entry.stream, entry.stream_id)))
        return [it for it in batch if id(it.entry) not in gone]

    async def _isolate(self, batch: list[Item]) -> None:
        """Rerun a failed batch one entry at a time so one bad input fails alone."""
        for entry in {id(it.entry): it.entry for it in batch}.values():
            items = [it for it in batch if it.entry is entry] + self._pool(entry).drop(entry)
            try:
                vecs = await self._forward(items)
                items, vecs = await self._refuse_nonfinite(items, vecs)
                self._reply_soon(complete(items, vecs, 0.0))
            except Exception as exc:
                log.warning("model %s failed on entry %s: %s", self.spec.name, entry.stream_id, exc)
                entry.error = (Code.INTERNAL.value, f"model {self.spec.name} failed on this request")
                del self._held[(entry.stream, entry.stream_id)]
                await self._dead_letter(entry.stream, entry.stream_id, entry.payload, f"model error: {exc}", entry.job)

    # -- replying ----------------------------------------------------------

    def _reply_soon(self, entries: list[Entry]) -> None:
        if entries:
            self._track(asyncio.ensure_future(self._reply(entries)))

    def _track(self, task: asyncio.Future[None]) -> None:
        self._replies.add(task)  # type: ignore[arg-type]
        task.add_done_callback(self._replies.discard)

    async def _reply(self, entries: list[Entry]) -> None:
        # An entry whose lease was lost (another worker reclaimed it while this one
        # stalled) is that worker's to answer now. One held past the visibility
        # timeout (this process was paused) is checked before answering.
        entries = [e for e in entries if (e.stream, e.stream_id) in self._held]
        lapsed = time.monotonic() - self.settings.visibility_timeout_s
        if any(e.leased_at < lapsed for e in entries):
            try:
                await self._keep_leases([e for e in entries if e.leased_at < lapsed])
            except TRANSIENT:
                pass  # cannot tell: answer; the gateway drops a second answer
            entries = [e for e in entries if (e.stream, e.stream_id) in self._held]
        if not entries:
            return
        await self.outbox.deliver(entries)
        for entry in entries:
            self._held.pop((entry.stream, entry.stream_id), None)
            spans.record(entry.job, self.spec.name, self.name, entry)
        metrics.WORKER_REPLIES.labels(self.spec.name).inc(len(entries))

    async def _finish_silently(self, stream: str, stream_id: bytes) -> None:
        await self.outbox.finish_silently(stream, stream_id)

    async def _dead_letter(
        self, stream: str, stream_id: bytes, payload: bytes, reason: str, job: wire.Job | None
    ) -> None:
        await self.outbox.dead_letter(stream, stream_id, payload, reason, job)
        if job is not None:
            spans.record(job, self.spec.name, self.name, error=f"dead-lettered: {reason}")

    # -- liveness, leases, recovery ----------------------------------------

    async def _heartbeat_loop(self) -> None:
        beat = self.settings.heartbeat_s
        last = time.monotonic()
        while True:
            await asyncio.sleep(beat)
            now = time.monotonic()
            if now - last > 3 * beat:
                self._paused_s += now - last - beat
            last = now
            metrics.WORKER_ALIVE.labels(self.spec.name).set_to_current_time()
            if self._hung():
                # A hung model cannot be interrupted from Python. Exiting stops the
                # heartbeat and the leases, so the batch's entries are reclaimed
                # (and, redelivered, run alone; a poison one is dead-lettered).
                log.critical(
                    "model %s: a forward pass has run over batch_timeout_s (%.1f s); exiting",
                    self.spec.name,
                    self.settings.batch_timeout_s,
                )
                logging.shutdown()
                os._exit(EXIT_HUNG)
            try:
                await self._heartbeat()
                metrics.WORKER_HEARTBEAT.labels(self.spec.name).set_to_current_time()
                await self._renew_leases()
            except TRANSIENT as exc:
                log.warning("heartbeat failed: %s", exc)

    def _hung(self) -> bool:
        """The forward pass running now has taken longer than ``batch_timeout_s``,
        not counting time the whole process was stopped."""
        running = self._forward_since
        if running is None:
            return False
        started, paused_before = running
        return time.monotonic() - started - (self._paused_s - paused_before) > self.settings.batch_timeout_s


async def serve(spec: ModelSpec, model: Model, settings: Settings) -> None:
    """Run a worker until SIGTERM or SIGINT, then drain and exit."""
    import signal

    worker = Worker(spec, model, settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    metrics.init_worker(spec.name)
    metrics.start_server(settings.metrics_port)
    try:
        await worker.run()
    finally:
        tracing.shutdown()
