"""The work one worker has read and not yet run: interactive calls, stream requests, job chunks, suspects.

Each lane of the model (``keys.lanes``) waits in its own pool, served in order:
a batch is cut from the stream pool only when no interactive call waits, and
from the job pool only when neither does. A redelivered entry (a suspect: it
may be what killed the worker that held it before) waits in a line of its own
and runs alone, one entry at a time, in a pool of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from embedstream import keys
from embedstream.registry import ModelSpec
from embedstream.workers.batcher import PADDING_FACTOR, Batcher, Entry, Item

#: While interactive calls arrive (seen within this many seconds), stream requests and
#: job chunks run in batches cut to a fraction of the budget, so a call never waits
#: behind a long batch of them: a forward pass cannot be interrupted once started.
INTERACTIVE_RECENT_S = 2.0
BULK_SHARE = {"cpu": 32, "accelerator": 4}


class Pools:
    """The waiting work of one worker, and which of it runs next."""

    def __init__(self, spec: ModelSpec, prefetch_inputs: int) -> None:
        padding = PADDING_FACTOR if spec.device == "cpu" else 0.0
        self.interactive = Batcher(spec.max_batch_tokens, spec.max_batch_size, padding)
        self.streams = Batcher(spec.max_batch_tokens, spec.max_batch_size, padding)
        self.bulk = Batcher(spec.max_batch_tokens, spec.max_batch_size, padding)
        self.isolated = Batcher(spec.max_batch_tokens, spec.max_batch_size, padding)
        self.suspects: deque[Entry] = deque()
        #: Inputs read ahead into a pool before reading stops until a batch leaves.
        self.prefetch = max(prefetch_inputs, spec.max_batch_size)
        share = BULK_SHARE["cpu" if spec.device == "cpu" else "accelerator"]
        self._bulk_limits = (max(64, spec.max_batch_tokens // share), max(1, spec.max_batch_size // share))
        self._interactive_seen = -INTERACTIVE_RECENT_S
        #: Each of the model's streams (``keys.lanes``) and the pool its entries wait in.
        self.lanes = dict(zip(keys.lanes(spec.name), (self.interactive, self.streams, self.bulk)))
        #: Set when work arrives (and on stop): the batch loop looks again.
        self.wake = asyncio.Event()
        #: Set when a batch leaves (and on stop): reading may go on.
        self.space = asyncio.Event()

    def pool(self, entry: Entry) -> Batcher:
        """The pool ``entry`` waits (or waited) in."""
        if entry.suspect:
            return self.isolated
        if entry.bulk:
            return self.bulk
        return self.lanes.get(entry.stream, self.interactive)

    def add(self, entry: Entry) -> None:
        """Queue a first delivery's inputs in its pool; a suspect joins the line."""
        if entry.suspect:
            self.suspects.append(entry)
        else:
            self.pool(entry).add(entry)

    def drop(self, entry: Entry) -> list[Item]:
        """Take ``entry`` out of wherever it waits; return its inputs that were waiting."""
        dropped = self.pool(entry).drop(entry)
        if entry in self.suspects:
            self.suspects.remove(entry)
        return dropped

    def next_suspect(self) -> Entry | None:
        """The suspect to run alone now: none while another one runs."""
        if not len(self.isolated) and self.suspects:
            return self.suspects.popleft()
        return None

    def next(self) -> Batcher:
        """Suspects first (one entry at a time), then interactive calls, stream requests, job chunks."""
        if len(self.isolated):
            return self.isolated
        for pool in (self.interactive, self.streams):
            if len(pool):
                return pool
        return self.bulk

    def saw_interactive(self) -> None:
        """Interactive work just arrived: cut stream and job-chunk batches small for a while."""
        self._interactive_seen = time.monotonic()

    def limits(self, pool: Batcher) -> tuple[int, int]:
        """The (tokens, size) limits of the next batch from ``pool``; (0, 0): the pool's own."""
        recent = time.monotonic() - self._interactive_seen < INTERACTIVE_RECENT_S
        if recent and (pool is self.streams or pool is self.bulk):
            return self._bulk_limits
        return (0, 0)

    def backlog(self, pool: Batcher) -> int:
        """Inputs waiting in ``pool``, plus the redelivered ones waiting to run alone."""
        return len(pool) + len(self.isolated) + sum(len(e.tokens) for e in self.suspects)

    def queued(self) -> int:
        """Inputs waiting, for the queued-inputs gauge."""
        # backlog(isolated) counts the isolated pool twice; kept as the gauge always read.
        return len(self.interactive) + len(self.streams) + len(self.bulk) + self.backlog(self.isolated)

    def close(self) -> None:
        """Wake whoever waits on the pools: the worker is stopping."""
        self.wake.set()
        self.space.set()
