"""The entries one worker holds, and their leases in the consumer group.

Redis streams deliver at least once; the ledger decides what this worker still
owns. It renews the lease of what it holds (only what it still owns,
atomically), forgets what another worker reclaimed while this one stalled, and
keeps each redelivered entry's delivery count to the times it actually ran.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from embedstream import keys, metrics
from embedstream.connections import REDIS_ERRORS
from embedstream.workers.batcher import Entry

log = logging.getLogger(__name__)
T = TypeVar("T")

# Renew the lease of entries this worker still owns, atomically: an entry another
# worker reclaimed while this one was stalled (SIGSTOP, a long GC, a VM pause) is
# left alone and reported lost, so a resumed worker never steals it back.
# ARGV: group, consumer, delivery count to set (-1: keep it), ids.
RENEW = """
local kept = {}
for i = 4, #ARGV do
  local row = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)[1]
  if row and row[2] == ARGV[2] then
    if tonumber(ARGV[3]) >= 0 then
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'RETRYCOUNT', ARGV[3], 'JUSTID')
    else
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    end
    kept[#kept + 1] = ARGV[i]
  end
end
return kept
"""


class Ledger:
    """What one worker holds, since when; ``forget`` is told of each entry whose lease was lost."""

    def __init__(
        self, redis: Any, model: str, worker: str, visibility_timeout_s: float, forget: Callable[[Entry], object]
    ) -> None:
        self.model = model
        self.worker = worker
        self.visibility_timeout_s = visibility_timeout_s
        self._forget = forget
        self._held: dict[tuple[str, bytes], Entry] = {}
        self._renew = redis.register_script(RENEW)

    def __contains__(self, entry: Entry) -> bool:
        return (entry.stream, entry.stream_id) in self._held

    def holds(self, stream: str, stream_id: bytes) -> bool:
        """True while this worker holds the entry ``stream_id`` of ``stream``."""
        return (stream, stream_id) in self._held

    def hold(self, entry: Entry) -> None:
        """Hold ``entry`` until it is answered, dropped or its lease is lost."""
        self._held[(entry.stream, entry.stream_id)] = entry

    def release(self, entry: Entry) -> bool:
        """Stop holding ``entry``; False when it was not held (any more)."""
        return self._held.pop((entry.stream, entry.stream_id), None) is not None

    async def renew(self) -> None:
        """Reset the idle time of entries held long, so a slow batch is not reclaimed;
        drop those another worker took over meanwhile."""
        horizon = time.monotonic() - self.visibility_timeout_s / 3
        stale = [e for e in self._held.values() if e.leased_at < horizon]
        if stale:
            await self._keep(stale)

    async def leased_while(self, stream: str, ids: list[bytes], work: Awaitable[T]) -> T:
        """``work``'s result, the entries ``ids`` (read, not held yet) renewed while it runs:
        decoding a long clip can outlast the visibility timeout, and another worker must not
        reclaim an entry this one is still preparing."""
        task = asyncio.ensure_future(work)
        while True:
            done, _ = await asyncio.wait({task}, timeout=self.visibility_timeout_s / 3)
            if done:
                return task.result()
            try:
                await self._renew(keys=[stream], args=[keys.GROUP, self.worker, -1, *ids])
            except REDIS_ERRORS as exc:
                log.warning("could not renew entries being prepared: %s", exc)

    async def answerable(self, entries: list[Entry]) -> list[Entry]:
        """The ``entries`` this worker may still answer."""
        # An entry whose lease was lost (another worker reclaimed it while this one
        # stalled) is that worker's to answer now. One held past the visibility
        # timeout (this process was paused) is checked before answering.
        entries = [e for e in entries if e in self]
        lapsed = time.monotonic() - self.visibility_timeout_s
        if any(e.leased_at < lapsed for e in entries):
            try:
                await self._keep([e for e in entries if e.leased_at < lapsed])
            except REDIS_ERRORS:
                pass  # cannot tell: answer; the gateway drops a second answer
            entries = [e for e in entries if e in self]
        return entries

    async def _keep(self, stale: list[Entry]) -> None:
        """Renew the entries still owned; forget the ones another worker took over."""
        now = time.monotonic()
        for stream in {e.stream for e in stale}:
            mine = [e for e in stale if e.stream == stream]
            ids = [e.stream_id for e in mine]
            kept = set(await self._renew(keys=[stream], args=[keys.GROUP, self.worker, -1, *ids]))
            for entry in mine:
                if entry.stream_id in kept:
                    entry.leased_at = now
                elif self.release(entry):
                    log.warning("lost the lease of %s (reclaimed by another worker); dropping it", entry.stream_id)
                    self._forget(entry)
                    metrics.WORKER_DROPPED.labels(self.model, "lease_lost").inc()

    async def charge(self, entry: Entry, running: bool) -> None:
        """Make Redis's delivery count of a redelivered entry count only the times it
        ran: while it waits behind another suspect its last delivery is not charged,
        so when that other one kills the worker, this one is not a step closer to the
        dead-letter stream. Charged again just before it runs alone."""
        count = entry.deliveries if running else entry.deliveries - 1
        try:
            await self._renew(keys=[entry.stream], args=[keys.GROUP, self.worker, count, entry.stream_id])
        except REDIS_ERRORS as exc:
            log.warning("could not set the delivery count of %s: %s", entry.stream_id, exc)
