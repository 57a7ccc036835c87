"""The progress bar of the CLI and of ``JobHandle.wait(progress=True)``: a thin wrapper over tqdm.

tqdm draws on stderr, pads each redraw over the last so nothing stray is left, smooths the
rate behind the ETA, and degrades to occasional lines when stderr is not a terminal.
"""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm


class Progress:
    """``update(done)`` moves the bar to ``done`` items; ``close()`` ends it. Silent when ``enabled`` is false."""

    def __init__(
        self,
        total: int | None,
        label: str = "",
        enabled: bool = True,
        stream: TextIO | None = None,
        unit: str = "items",
    ) -> None:
        self._bar = tqdm(
            total=total,
            desc=label,
            disable=not enabled,
            file=stream or sys.stderr,
            unit=unit,
            mininterval=0.1,
            dynamic_ncols=True,
            leave=True,
        )

    @property
    def done(self) -> int:
        """Items counted so far."""
        return int(self._bar.n)

    def update(self, done: int, total: int | None = None) -> None:
        """Record that ``done`` items are finished (of ``total``, when it changed)."""
        if total is not None and total != self._bar.total:
            self._bar.total = total
            self._bar.refresh()
        if done != self._bar.n:
            self._bar.update(done - self._bar.n)

    def start_at(self, done: int) -> None:
        """Count ``done`` items as finished before this run (a resume), outside the rate and ETA."""
        if not done:
            return
        self._bar.n = self._bar.last_print_n = self._bar.initial = done
        self._bar.refresh()

    def close(self) -> None:
        """Draw the final state and end the line."""
        self._bar.close()
