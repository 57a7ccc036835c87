"""The one clock that crosses processes: wall-clock milliseconds since the Unix epoch."""

from __future__ import annotations

import time


def now_ms() -> float:
    """Unix time in milliseconds: the unit of deadlines, heartbeats and job times in Redis."""
    # A float, so spans and queue times keep their sub-millisecond part; integer
    # fields of a record (a job's times, an entry's enqueue time) take int() of it.
    return time.time() * 1000.0
