"""Exponential waits between retries of a Redis call, shared by every loop that retries one."""

from __future__ import annotations

import asyncio


class Backoff:
    """Waits ``first`` seconds, doubling each time up to ``most``; ``reset`` after a success."""

    def __init__(self, first: float = 0.05, most: float = 1.0) -> None:
        self.first = first
        self.most = most
        #: The next wait, in seconds.
        self.delay = first

    @property
    def longest(self) -> bool:
        """True once the waits have grown to ``most``: the caller may choose to give up."""
        return self.delay >= self.most

    def reset(self) -> None:
        """Start again from the shortest wait (the call went through)."""
        self.delay = self.first

    async def wait(self) -> None:
        """Sleep the current delay, then double it (up to ``most``)."""
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.most)
