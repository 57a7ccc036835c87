"""A worker's liveness: its heartbeat in Redis, and the watch on a hung forward pass.

Every beat the worker proves its event loop ticks (a metric), writes its
heartbeat (``embedstream.heartbeat``) and runs ``on_beat`` (lease renewal). A
forward pass that outlives ``batch_timeout_s`` cannot be interrupted from
Python, so the process exits and its entries are reclaimed elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from embedstream import heartbeat, metrics
from embedstream.loops import Mishaps

log = logging.getLogger(__name__)

#: Exit status of a worker whose forward pass outlived ``batch_timeout_s``.
EXIT_HUNG = 75


class Liveness:
    """The heartbeat loop and hung-forward detection of one worker."""

    def __init__(
        self,
        redis: Any,
        model: str,
        worker: str,
        info: heartbeat.ModelInfo,
        heartbeat_s: float,
        batch_timeout_s: float,
        on_beat: Callable[[], Awaitable[None]],
    ) -> None:
        self.redis = redis
        self.model = model
        self.worker = worker
        self.info = info
        self.heartbeat_s = heartbeat_s
        self.batch_timeout_s = batch_timeout_s
        self._on_beat = on_beat
        self._beat = heartbeat.Beat(redis, model, worker, info)
        self._beat_mishaps = Mishaps("heartbeat")
        self._renew_mishaps = Mishaps("lease renewal")
        #: (monotonic start, paused seconds at start) of the forward pass running now.
        self._forward_since: tuple[float, float] | None = None
        #: Seconds this process was stopped (SIGSTOP, a VM pause): not the model's time.
        self._paused_s = 0.0

    async def beat(self) -> None:
        """Write one heartbeat (the first one at start too: the readiness probe reads its time)."""
        await self._beat()
        metrics.WORKER_HEARTBEAT.labels(self.model).set_to_current_time()

    async def run(self) -> None:
        """Beat every ``heartbeat_s`` until cancelled; exit the process if the model hangs."""
        beat = self.heartbeat_s
        last = time.monotonic()
        while True:
            await asyncio.sleep(beat)
            now = time.monotonic()
            if now - last > 3 * beat:
                self._paused_s += now - last - beat
            last = now
            metrics.WORKER_ALIVE.labels(self.model).set_to_current_time()
            if self.hung():
                # A hung model cannot be interrupted from Python. Exiting stops the
                # heartbeat and the leases, so the batch's entries are reclaimed
                # (and, redelivered, run alone; a poison one is dead-lettered).
                log.critical(
                    "model %s: a forward pass has run over batch_timeout_s (%.1f s); exiting",
                    self.model,
                    self.batch_timeout_s,
                )
                logging.shutdown()
                os._exit(EXIT_HUNG)
            # Each step survives any failure of its own (Redis full, a command denied, a
            # connection killed): a loop that ended on one would leave a live worker unseen.
            try:
                await self.beat()
                self._beat_mishaps.recovered()
            except Exception as exc:
                self._beat_mishaps.failed(exc)
            try:
                await self._on_beat()
                self._renew_mishaps.recovered()
            except Exception as exc:
                self._renew_mishaps.failed(exc)

    @contextmanager
    def forwarding(self) -> Iterator[None]:
        """Around a forward pass (on the model thread): the heartbeat watches how long it takes."""
        self._forward_since = (time.monotonic(), self._paused_s)
        try:
            yield
        finally:
            self._forward_since = None

    def hung(self) -> bool:
        """The forward pass running now has taken longer than ``batch_timeout_s``,
        not counting time the whole process was stopped."""
        running = self._forward_since
        if running is None:
            return False
        started, paused_before = running
        return time.monotonic() - started - (self._paused_s - paused_before) > self.batch_timeout_s
