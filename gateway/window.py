"""A credit window: at most N inputs of one stream in flight at once."""

from __future__ import annotations

import asyncio


class Window:
    """Counts inputs in flight; :meth:`acquire` waits until they fit."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.used = 0
        self.peak = 0
        self._freed = asyncio.Event()

    async def acquire(self, n: int) -> None:
        """Wait until ``n`` more inputs fit (a request larger than the window waits for all)."""
        n = min(n, self.size)
        while self.used + n > self.size:
            self._freed.clear()
            await self._freed.wait()
        self.used += n
        self.peak = max(self.peak, self.used)

    def release(self, n: int) -> None:
        """Return ``n`` inputs' credit."""
        self.used -= min(n, self.size)
        self._freed.set()
