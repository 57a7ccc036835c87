"""Recovery of abandoned work: reclaiming a dead worker's entries, and handing back on stop.

Redis streams deliver at least once. A live worker reclaims entries idle past the
visibility timeout (their worker died), dead-letters those delivered too often,
passes the rest to its intake with their delivery counts (a redelivered entry
runs alone), forgets consumers that are gone for good, and on SIGTERM hands
everything it still holds back to the group at once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from embedstream import heartbeat, keys, metrics, wire
from embedstream.connections import TRANSIENT
from embedstream.loops import Mishaps
from embedstream.settings import Settings
from embedstream.workers.batcher import Batcher
from embedstream.workers.intake import READ_ENTRIES, Intake
from embedstream.workers.outbox import Outbox
from embedstream.workers.pools import Pools

log = logging.getLogger(__name__)


class Recovery:
    """Reclaiming, dead-lettering and handing back, for one worker of one model."""

    def __init__(
        self,
        redis: Any,
        model: str,
        worker: str,
        settings: Settings,
        pools: Pools,
        intake: Intake,
        outbox: Outbox,
        stopping: asyncio.Event,
    ) -> None:
        self.redis = redis
        self.model = model
        self.worker = worker
        self.settings = settings
        self.pools = pools
        self.intake = intake
        self.outbox = outbox
        self.stopping = stopping
        self.lanes = keys.lanes(model)

    async def run(self) -> None:
        """Reclaim every quarter of the visibility timeout until cancelled."""
        interval = max(0.2, self.settings.visibility_timeout_s / 4)
        mishaps = Mishaps("reclaim")
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reclaim()
                mishaps.recovered()
            except Exception as exc:  # the next scan tries again, whatever went wrong
                mishaps.failed(exc)

    async def reclaim(self) -> None:
        """Take over entries idle past the visibility timeout (their worker died)."""
        for lane, pool in self.pools.lanes.items():
            await self._reclaim_stream(lane, pool)
        await self._forget_dead_consumers()

    async def hand_back(self) -> None:
        """Give the entries still pending on this worker back to the group at once:
        idle as if timed out, so another worker's next reclaim takes them, and with
        their delivery count restored, so a restart never counts against them."""
        visibility_ms = int(self.settings.visibility_timeout_s * 1000)
        handed = 0
        for stream in self.lanes:
            rows = await self.redis.xpending_range(stream, keys.GROUP, "-", "+", 100_000, consumername=self.worker)
            if not rows:
                continue
            pipe = self.redis.pipeline(transaction=False)
            for row in rows:
                pipe.xclaim(
                    stream,
                    keys.GROUP,
                    self.worker,
                    0,
                    [row["message_id"]],
                    idle=visibility_ms,
                    retrycount=max(0, int(row["times_delivered"]) - 1),
                    justid=True,
                )
            await pipe.execute()
            handed += len(rows)
        if handed:
            log.info("handed back %d pending entries of model %s", handed, self.model)

    async def _forget_dead_consumers(self) -> None:
        """Remove consumers that left nothing pending and stayed silent: every worker
        restart adds a consumer name, and the group would otherwise grow forever.
        One with pending entries stays until reclaiming empties it, and a worker with
        a live heartbeat is never touched: DELCONSUMER would drop entries it had
        just read from the pending list, and with them the chance to reclaim them."""
        horizon_ms = self.settings.consumer_gc_s * 1000
        live = await heartbeat.live(self.redis, self.model, self.settings.worker_liveness_s)
        for stream in self.lanes:
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
        while self.pools.backlog(pool) < self.pools.prefetch and not self.stopping.is_set():
            try:
                start_id, claimed, _deleted = await self.redis.xautoclaim(
                    stream, keys.GROUP, self.worker, min_idle, start_id=start, count=READ_ENTRIES
                )
            except TRANSIENT:
                raise
            except Exception as exc:
                if "NOGROUP" in str(exc):
                    return
                raise
            claimed = [(sid, f) for sid, f in claimed if f is not None]
            if claimed:
                metrics.REDELIVERED.labels(self.model).inc(len(claimed))
                counts = await self._delivery_counts(stream, [sid for sid, _ in claimed])
                keep = []
                for sid, fields in claimed:
                    if counts.get(sid, 0) > self.settings.max_deliveries:
                        payload = fields.get(keys.PAYLOAD.encode(), b"")
                        try:
                            job: wire.Job | None = wire.decode_job(payload)
                        except wire.WireError:
                            job = None
                        await self.outbox.dead_letter(stream, sid, payload, f"delivered {counts[sid]} times", job)
                    else:
                        keep.append((sid, fields))
                log.info("reclaimed %d entries of model %s", len(keep), self.model)
                await self.intake.accept(keep, stream, counts)
            start = start_id.decode() if isinstance(start_id, bytes) else str(start_id)
            if start == "0-0":
                return

    async def _delivery_counts(self, stream: str, ids: list[bytes]) -> dict[bytes, int]:
        pipe = self.redis.pipeline(transaction=False)
        for sid in ids:
            pipe.xpending_range(stream, keys.GROUP, min=sid, max=sid, count=1)
        counts: dict[bytes, int] = {}
        for sid, rows in zip(ids, await pipe.execute()):
            counts[sid] = int(rows[0]["times_delivered"]) if rows else 0
        return counts
