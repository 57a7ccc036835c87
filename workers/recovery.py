"""Recovery of one worker's entries: leases, reclaiming a dead worker's work, handing back.

Redis streams deliver at least once; these are the parts of a worker that decide who
holds an entry. A live worker renews the lease of what it holds (only what it still
owns, atomically), reclaims entries idle past the visibility timeout (their worker
died), dead-letters those delivered too often, keeps each redelivered entry's delivery
count to the times it actually ran, and on SIGTERM hands everything it holds back at
once. Mixed into :class:`workers.worker.Worker`, whose state it reads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

from embedstream.workers.batcher import Batcher, Entry

from embedstream import heartbeat, keys, metrics, wire
from embedstream.connections import TRANSIENT
from embedstream.registry import ModelSpec
from embedstream.settings import Settings

log = logging.getLogger(__name__)

#: Entries read (or reclaimed) per Redis call.
READ_ENTRIES = 64

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


class Recovery:
    """Lease renewal, reclaiming and handing back, for one worker."""

    redis: Any
    settings: Settings
    spec: ModelSpec
    name: str
    queue: str
    bulk_queue: str
    batcher: Batcher
    bulk: Batcher
    isolated: Batcher
    prefetch: int
    _held: dict[tuple[str, bytes], Entry]
    _suspects: deque[Entry]
    _stopping: asyncio.Event
    _renew: Any

    def _pool(self, entry: Entry) -> Batcher:
        raise NotImplementedError

    async def _accept(
        self, raw: list[tuple[bytes, dict[bytes, bytes]]], stream: str, deliveries: dict[bytes, int] | None = None
    ) -> None:
        raise NotImplementedError

    async def _dead_letter(
        self, stream: str, stream_id: bytes, payload: bytes, reason: str, job: wire.Job | None
    ) -> None:
        raise NotImplementedError

    async def _renew_leases(self) -> None:
        """Reset the idle time of entries held long, so a slow batch is not reclaimed;
        drop those another worker took over meanwhile."""
        horizon = time.monotonic() - self.settings.visibility_timeout_s / 3
        stale = [e for e in self._held.values() if e.leased_at < horizon]
        if stale:
            await self._keep_leases(stale)

    async def _keep_leases(self, stale: list[Entry]) -> None:
        """Renew the entries still owned; forget the ones another worker took over."""
        now = time.monotonic()
        for stream in {e.stream for e in stale}:
            mine = [e for e in stale if e.stream == stream]
            kept = set(await self._renew(keys=[stream], args=[keys.GROUP, self.name, -1, *(e.stream_id for e in mine)]))
            for entry in mine:
                if entry.stream_id in kept:
                    entry.leased_at = now
                elif self._held.pop((entry.stream, entry.stream_id), None) is not None:
                    log.warning("lost the lease of %s (reclaimed by another worker); dropping it", entry.stream_id)
                    self._pool(entry).drop(entry)
                    if entry in self._suspects:
                        self._suspects.remove(entry)
                    metrics.WORKER_DROPPED.labels(self.spec.name, "lease_lost").inc()

    async def _charge(self, entry: Entry, running: bool) -> None:
        """Make Redis's delivery count of a redelivered entry count only the times it
        ran: while it waits behind another suspect its last delivery is not charged,
        so when that other one kills the worker, this one is not a step closer to the
        dead-letter stream. Charged again just before it runs alone."""
        count = entry.deliveries if running else entry.deliveries - 1
        try:
            await self._renew(keys=[entry.stream], args=[keys.GROUP, self.name, count, entry.stream_id])
        except TRANSIENT as exc:
            log.warning("could not set the delivery count of %s: %s", entry.stream_id, exc)

    async def _hand_back(self) -> None:
        """Give the entries still pending on this worker back to the group at once:
        idle as if timed out, so another worker's next reclaim takes them, and with
        their delivery count restored, so a restart never counts against them."""
        visibility_ms = int(self.settings.visibility_timeout_s * 1000)
        handed = 0
        for stream in (self.queue, self.bulk_queue):
            rows = await self.redis.xpending_range(stream, keys.GROUP, "-", "+", 100_000, consumername=self.name)
            if not rows:
                continue
            pipe = self.redis.pipeline(transaction=False)
            for row in rows:
                pipe.xclaim(
                    stream,
                    keys.GROUP,
                    self.name,
                    0,
                    [row["message_id"]],
                    idle=visibility_ms,
                    retrycount=max(0, int(row["times_delivered"]) - 1),
                    justid=True,
                )
            await pipe.execute()
            handed += len(rows)
        if handed:
            log.info("handed back %d pending entries of model %s", handed, self.spec.name)

    async def _reclaim_loop(self) -> None:
        interval = max(0.2, self.settings.visibility_timeout_s / 4)
        while True:
            await asyncio.sleep(interval)
            try:
                await self._reclaim()
            except TRANSIENT as exc:
                log.warning("reclaim failed: %s", exc)

    async def _reclaim(self) -> None:
        """Take over entries idle past the visibility timeout (their worker died)."""
        await self._reclaim_stream(self.queue, self.batcher)
        await self._reclaim_stream(self.bulk_queue, self.bulk)
        await self._forget_dead_consumers()

    async def _forget_dead_consumers(self) -> None:
        """Remove consumers that left nothing pending and stayed silent: every worker
        restart adds a consumer name, and the group would otherwise grow forever.
        One with pending entries stays until reclaiming empties it, and a worker with
        a live heartbeat is never touched: DELCONSUMER would drop entries it had
        just read from the pending list, and with them the chance to reclaim them."""
        horizon_ms = self.settings.consumer_gc_s * 1000
        live = await heartbeat.live(self.redis, self.spec.name, self.settings.worker_liveness_s)
        for stream in (self.queue, self.bulk_queue):
            try:
                consumers = await self.redis.xinfo_consumers(stream, keys.GROUP)
            except TRANSIENT:
                raise
            except Exception:  # NOGROUP while Redis recovers: nothing to forget
                continue
            for row in consumers:
                name = row["name"].decode() if isinstance(row["name"], bytes) else str(row["name"])
                if name not in live and int(row["pending"]) == 0 and int(row["idle"]) > horizon_ms:
                    await self.redis.xgroup_delconsumer(stream, keys.GROUP, name)
                    log.info("forgot idle consumer %s of %s", name, stream)

    async def _reclaim_stream(self, stream: str, pool: Batcher) -> None:
        min_idle = int(self.settings.visibility_timeout_s * 1000)
        start = "0-0"
        while self._backlog(pool) < self.prefetch and not self._stopping.is_set():
            try:
                start_id, claimed, _deleted = await self.redis.xautoclaim(
                    stream, keys.GROUP, self.name, min_idle, start_id=start, count=READ_ENTRIES
                )
            except TRANSIENT:
                raise
            except Exception as exc:
                if "NOGROUP" in str(exc):
                    return
                raise
            claimed = [(sid, f) for sid, f in claimed if f is not None]
            if claimed:
                metrics.REDELIVERED.labels(self.spec.name).inc(len(claimed))
                counts = await self._delivery_counts(stream, [sid for sid, _ in claimed])
                keep = []
                for sid, fields in claimed:
                    if counts.get(sid, 0) > self.settings.max_deliveries:
                        payload = fields.get(keys.PAYLOAD.encode(), b"")
                        try:
                            job: wire.Job | None = wire.decode_job(payload)
                        except wire.WireError:
                            job = None
                        await self._dead_letter(stream, sid, payload, f"delivered {counts[sid]} times", job)
                    else:
                        keep.append((sid, fields))
                log.info("reclaimed %d entries of model %s", len(keep), self.spec.name)
                await self._accept(keep, stream, counts)
            start = start_id.decode() if isinstance(start_id, bytes) else str(start_id)
            if start == "0-0":
                return

    def _backlog(self, pool: Batcher) -> int:
        """Inputs waiting in ``pool``, plus the redelivered ones waiting to run alone."""
        return len(pool) + len(self.isolated) + sum(len(e.tokens) for e in self._suspects)

    async def _delivery_counts(self, stream: str, ids: list[bytes]) -> dict[bytes, int]:
        pipe = self.redis.pipeline(transaction=False)
        for sid in ids:
            pipe.xpending_range(stream, keys.GROUP, min=sid, max=sid, count=1)
        counts: dict[bytes, int] = {}
        for sid, rows in zip(ids, await pipe.execute()):
            counts[sid] = int(rows[0]["times_delivered"]) if rows else 0
        return counts
