"""Screening a batch around the forward pass: before it, drop the inputs nobody waits for any
more (deadline passed, the gateway withdrew the entry, the job was cancelled or expired); after
it, fail and dead-letter the entries whose outputs hold NaN or Inf."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np

from embedstream import clock, jobstore, keys, metrics
from embedstream.connections import REDIS_ERRORS
from embedstream.workers import finish
from embedstream.workers.batcher import Item
from embedstream.workers.ledger import Ledger
from embedstream.workers.model import Model
from embedstream.workers.outbox import Outbox
from embedstream.workers.pools import Pools


class Screen:
    """The checks of one worker's batches; ``track`` keeps the silent finishes it starts."""

    def __init__(
        self,
        redis: Any,
        name: str,
        model: Model,
        pools: Pools,
        ledger: Ledger,
        outbox: Outbox,
        track: Callable[[asyncio.Future[None]], None],
    ) -> None:
        self.redis = redis
        self.name = name
        self.model = model
        self.pools = pools
        self.ledger = ledger
        self.outbox = outbox
        self.track = track

    async def live(self, batch: list[Item]) -> list[Item]:
        """Drop inputs whose caller is gone: deadline passed, the gateway withdrew
        the entry (XDEL on cancel or timeout), or its job was cancelled or expired.
        One pipelined XRANGE (or HGET of the job's state) per entry."""
        entries = list({id(it.entry): it.entry for it in batch}.values())
        now = clock.now_ms()
        gone: dict[int, str] = {id(e): "expired" for e in entries if e.expired(now)}
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
            except REDIS_ERRORS:
                found = [b"1"] * len(unchecked)  # cannot tell: do the work
            cancelled = str(jobstore.CANCELLED).encode()
            gone.update({id(e): "cancelled" for e, rows in zip(unchecked, found) if not rows or rows == cancelled})
        if not gone:
            return batch
        for entry in entries:
            reason = gone.get(id(entry))
            if reason is None or entry not in self.ledger:
                continue
            self.pools.drop(entry)
            self.ledger.release(entry)
            metrics.WORKER_DROPPED.labels(self.name, reason).inc()
            self.track(asyncio.ensure_future(self.outbox.finish_silently(entry.stream, entry.stream_id)))
        return [it for it in batch if id(it.entry) not in gone]

    async def finite(self, batch: list[Item], outputs: Any) -> tuple[list[Item], Any]:
        """Fail (and dead-letter) the entries whose outputs hold NaN or Inf; keep the rest."""
        rows = finish.nonfinite(self.model.output, outputs)
        if not rows:
            return batch, outputs
        bad = {id(batch[i].entry): batch[i] for i in rows}
        for item in bad.values():
            entry = item.entry
            metrics.NON_FINITE.labels(self.name).inc()
            self.pools.drop(entry)
            if self.ledger.release(entry):
                reason = f"model output for inputs[{item.index}] holds NaN or Inf"
                await self.outbox.dead_letter(entry.stream, entry.stream_id, entry.payload, reason, entry.job)
        keep = [i for i, it in enumerate(batch) if id(it.entry) not in bad]
        kept = outputs[keep] if isinstance(outputs, np.ndarray) else [outputs[i] for i in keep]
        return [batch[i] for i in keep], kept
