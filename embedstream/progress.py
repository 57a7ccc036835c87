"""A small progress bar for stderr: done/total, items/s and ETA, redrawn at most 10 times a second."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``update(done)`` redraws; ``close()`` ends the line. Silent when ``enabled`` is false."""

    def __init__(self, total: int | None, label: str = "", enabled: bool = True, stream: TextIO | None = None) -> None:
        self.total = total
        self.label = label
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self.done = 0
        self._drawn = 0.0

    def update(self, done: int, total: int | None = None, force: bool = False) -> None:
        """Record progress and redraw if enough time passed."""
        self.done = done
        if total is not None:
            self.total = total
        now = time.monotonic()
        if self.enabled and (force or now - self._drawn >= 0.1):
            self._drawn = now
            self.stream.write("\r" + self.line(now))
            self.stream.flush()

    def line(self, now: float | None = None) -> str:
        """The text of the bar."""
        elapsed = max((now or time.monotonic()) - self.started, 1e-9)
        rate = self.done / elapsed
        if self.total:
            frac = min(1.0, self.done / self.total)
            bar = "#" * int(frac * 30)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            eta_text = f"{int(eta // 60)}:{int(eta % 60):02d}" if eta != float("inf") else "?"
            return f"{self.label} [{bar:<30}] {self.done}/{self.total} {frac:6.1%} {rate:,.0f} items/s ETA {eta_text}"
        return f"{self.label} {self.done} items {rate:,.0f} items/s"

    def close(self) -> None:
        """Draw the final state and end the line."""
        if self.enabled:
            self.update(self.done, force=True)
            self.stream.write("\n")
            self.stream.flush()
