"""One worker process for one model: consume, batch, run, reply, recover.

Three lanes overlap: the event loop reads Redis, renews leases, reclaims and
replies; a prep thread tokenizes what was just read; a model thread runs the
forward pass. Replies are written before XACK, so a crash at any point leaves
the entry pending for another worker, and the gateway drops a second answer.

The worker is the batch loop and the lifecycle; its collaborators each own one
job: :class:`Intake` reads and pools, :class:`Pools` holds the waiting work,
:class:`Ledger` what is held and its leases, :class:`Liveness` the heartbeat,
:class:`Recovery` the reclaiming and handing back, :class:`Screen` the checks before
and after a forward pass, :class:`Outbox` every write.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from embedstream import clock, heartbeat, keys, loadfailure, metrics, tracing
from embedstream.backoff import Backoff
from embedstream.connections import REDIS_ERRORS, connect, stop_tasks
from embedstream.errors import Code
from embedstream.registry import ModelSpec
from embedstream.settings import Settings
from embedstream.workers import allocator, media, profiles, spans
from embedstream.workers.batcher import Batcher, Entry, Item, complete
from embedstream.workers.cached import Cache
from embedstream.workers.intake import Intake
from embedstream.workers.ledger import Ledger
from embedstream.workers.liveness import Liveness
from embedstream.workers.model import Model
from embedstream.workers.outbox import Outbox
from embedstream.workers.pools import Pools
from embedstream.workers.recovery import Recovery
from embedstream.workers.screening import Screen
from embedstream.workers.threads import ThreadPolicy, set_torch_threads

log = logging.getLogger(__name__)


class Worker:
    """Serves one model from its Redis stream until stopped."""

    def __init__(self, spec: ModelSpec, model: Model, settings: Settings, name: str = "") -> None:
        self.spec = spec
        self.model = model
        self.settings = settings
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._stopping = asyncio.Event()
        self._replies: set[asyncio.Task[None]] = set()
        self._compute = ThreadPoolExecutor(1, thread_name_prefix="model")
        # Adaptive only for torch on CPU: beside an accelerator torch's CPU threads do little, the
        # debug model runs no torch at all, and ONNX Runtime's pool shares out a busy core's work itself.
        adaptive = spec.device == "cpu" and spec.family != "debug" and getattr(model, "engine", "torch") == "torch"
        fixed = settings.threads if adaptive else settings.torch_threads()
        self.threads = ThreadPolicy(fixed, set_torch_threads, settings.torch_threads())
        self.redis = connect(settings.redis_url, settings.redis_timeout_s, block_s=1.0)
        self.pools = Pools(spec, settings.prefetch_inputs)
        self.outbox = Outbox(
            self.redis,
            spec,
            model,
            self.name,
            self._stopping,
            settings.max_dead_letters,
            settings.visibility_timeout_s,
        )
        self.ledger = Ledger(self.redis, spec.name, self.name, settings.visibility_timeout_s, self.pools.drop)
        served = profiles.describe(spec, model)
        info = heartbeat.ModelInfo(
            family=model.family,
            output=model.output,
            dimensions=model.dimensions,
            max_input_tokens=model.max_input_tokens,
            normalizes=model.normalizes,
            profile=served,
        )
        self.liveness = Liveness(
            self.redis, spec.name, self.name, info, settings.heartbeat_s, settings.batch_timeout_s, self.ledger.renew
        )
        self.cache = Cache(self.redis, spec, model, served, settings)
        self.intake = Intake(
            self.redis,
            spec,
            model,
            self.name,
            self.pools,
            self.ledger,
            self.outbox,
            self._stopping,
            self._reply_soon,
            lambda: self._until_redis(self._setup),
            (settings.max_chunks_per_input, settings.max_chunks_per_request),
            media.Budget.of(settings),
            self.cache,
        )
        self.screen = Screen(self.redis, spec.name, model, self.pools, self.ledger, self.outbox, self._track)
        self.recovery = Recovery(
            self.redis, spec.name, self.name, settings, self.pools, self.intake, self.outbox, self._stopping
        )

    async def run(self) -> None:
        """Serve until :meth:`stop`; then finish the batch in the model and hand the rest back."""
        await self._until_redis(self._setup)
        log.info("worker %s serving model %s from %s", self.name, self.spec.name, ", ".join(keys.lanes(self.spec.name)))
        reader = asyncio.create_task(self.intake.run(), name="read")
        background = [
            asyncio.create_task(self.liveness.run(), name="heartbeat"),
            asyncio.create_task(self.recovery.run(), name="reclaim"),
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
                await heartbeat.leave(self.redis, self.spec.name, self.name)
                await self.recovery.hand_back()
            except REDIS_ERRORS as exc:
                log.warning("could not hand back pending entries (%s); they are reclaimed after the timeout", exc)
            await self.redis.aclose()
            self.intake.close()
            self._compute.shutdown(wait=True)
            log.info("worker %s stopped", self.name)

    def stop(self) -> None:
        """Stop reading; the batch in the model finishes, then run() hands back the rest and returns."""
        self._stopping.set()
        self.pools.close()

    async def _setup(self) -> None:
        for stream in keys.lanes(self.spec.name):
            try:
                await self.redis.xgroup_create(stream, keys.GROUP, id="0", mkstream=True)
            except Exception as exc:  # BUSYGROUP: another worker made it first
                if "BUSYGROUP" not in str(exc):
                    raise
        await self.liveness.beat()
        await loadfailure.clear(self.redis, self.spec.name)  # this model loads: a past failure is over

    async def _until_redis(self, action: Callable[[], Awaitable[None]]) -> None:
        backoff = Backoff()
        while not self._stopping.is_set():
            try:
                await action()
                return
            except REDIS_ERRORS as exc:
                log.warning("redis unreachable (%s); retrying", exc)
                await backoff.wait()

    # -- batching and compute ----------------------------------------------

    async def _next_pool(self) -> Batcher:
        """Suspects first (one entry at a time), then interactive work, then job chunks."""
        suspect = self.pools.next_suspect()
        if suspect is not None:
            await self.ledger.charge(suspect, running=True)
            self.pools.isolated.add(suspect)
        return self.pools.next()

    async def _batch_loop(self) -> None:
        wait_s = self.settings.max_wait_ms / 1000.0
        wake = self.pools.wake
        idle_since = 0.0
        trimmed = False
        while not self._stopping.is_set():
            pool = await self._next_pool()
            if not len(pool):
                wake.clear()
                if trimmed or allocator.trim is None:
                    await wake.wait()
                    continue
                try:
                    await asyncio.wait_for(wake.wait(), allocator.IDLE_S)
                except TimeoutError:  # idle: what the batches left in the allocator goes back
                    await asyncio.get_running_loop().run_in_executor(self._compute, allocator.trim)
                    trimmed = True
                continue
            trimmed = False
            left = idle_since + wait_s - time.monotonic()
            if left > 0 and pool is not self.pools.isolated and not pool.full():
                # The model just finished a batch and the pool holds less than one:
                # give inputs already on their way (callers answered by that batch
                # sending their next) a moment to join. The wait counts from the end
                # of the last pass, so a call reaching an idle worker runs at once.
                wake.clear()
                try:
                    await asyncio.wait_for(wake.wait(), left)
                except TimeoutError:
                    pass
                if self._stopping.is_set():
                    return
            batch = await self.screen.live(pool.take(*self.pools.limits(pool)))
            self.pools.space.set()
            if not batch:
                continue
            started = clock.now_ms()
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
            idle_since = time.monotonic()
            batch, vectors = await self.screen.finite(batch, vectors)
            self._reply_soon(complete(batch, vectors, elapsed))

    async def _forward(self, batch: list[Item]) -> Any:
        """Run the model on the model thread; the heartbeat watches how long it takes."""

        def run() -> Any:
            self.threads.apply()
            with self.liveness.forwarding():
                return self.model.forward(
                    [it.entry.tokens[it.index] for it in batch], [it.entry.normalize for it in batch]
                )

        return await asyncio.get_running_loop().run_in_executor(self._compute, run)

    async def _isolate(self, batch: list[Item]) -> None:
        """Rerun a failed batch one entry at a time so one bad input fails alone."""
        for entry in {id(it.entry): it.entry for it in batch}.values():
            items = [it for it in batch if it.entry is entry] + self.pools.drop(entry)
            try:
                vecs = await self._forward(items)
                items, vecs = await self.screen.finite(items, vecs)
                self._reply_soon(complete(items, vecs, 0.0))
            except Exception as exc:
                log.warning("model %s failed on entry %s: %s", self.spec.name, entry.stream_id, exc)
                entry.error = (Code.INTERNAL.value, f"model {self.spec.name} failed on this request")
                self.ledger.release(entry)
                reason = f"model error: {exc}"
                await self.outbox.dead_letter(entry.stream, entry.stream_id, entry.payload, reason, entry.job)

    # -- replying ----------------------------------------------------------

    def _reply_soon(self, entries: list[Entry]) -> None:
        if entries:
            self._track(asyncio.ensure_future(self._reply(entries)))

    def _track(self, task: asyncio.Future[None]) -> None:
        self._replies.add(task)  # type: ignore[arg-type]
        task.add_done_callback(self._replies.discard)

    async def _reply(self, entries: list[Entry]) -> None:
        entries = await self.ledger.answerable(entries)
        if not entries:
            return
        unstored = await self.outbox.deliver(entries)
        for entry in entries:
            self.ledger.release(entry)
        if unstored:
            # Released first, so this worker's own reclaim scan may take them straight back.
            await self.outbox.hand_back([(e.stream, e.stream_id) for e in unstored])
        refused = {id(e) for e in unstored}
        answered = [e for e in entries if id(e) not in refused]
        for entry in answered:
            spans.record(entry.job, self.spec.name, self.name, entry)
        metrics.WORKER_REPLIES.labels(self.spec.name).inc(len(answered))
        await self.cache.store(answered)  # after the answers: a cache write never delays one


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
