"""Retry policy: which status codes are retried, how long to wait, the gateway's hint."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


@dataclass(frozen=True, slots=True)
class Retry:
    """How often and how patiently to retry UNAVAILABLE / RESOURCE_EXHAUSTED."""

    attempts: int = 6
    initial_s: float = 0.05
    max_s: float = 2.0

    def backoff(self, fail: Callable[[grpc.RpcError], Exception] | None = None) -> Backoff:
        """A fresh retry budget for one call; ``fail`` makes the error raised once it is spent."""
        return Backoff(self, fail)

    def delays(self) -> Iterator[float]:
        """Backoff before each retry: exponential, capped, with full jitter."""
        for n in range(self.attempts - 1):
            yield random.uniform(0, min(self.max_s, self.initial_s * 2**n))


def retry_after(exc: grpc.RpcError) -> float:
    """The gateway's retry hint in seconds (trailing ``retry-after-ms`` of a rate-limited call), or 0."""
    for key, value in exc.trailing_metadata() or ():
        if key == "retry-after-ms" and str(value).isdigit():
            return int(value) / 1000
    return 0.0


class Backoff:
    """One call's retry budget under a :class:`Retry`: how long to wait, or the error raised again."""

    def __init__(self, retry: Retry, fail: Callable[[grpc.RpcError], Exception] | None = None) -> None:
        self._retry = retry
        self._delays = retry.delays()
        self._fail = fail

    def reset(self) -> None:
        """The call made progress (a stream answered): the next failure starts a fresh budget."""
        self._delays = self._retry.delays()

    def after(self, exc: grpc.RpcError) -> float:
        """Seconds to wait before retrying ``exc``; raises it when it is not retryable or the budget is spent."""
        delay = next(self._delays, None) if exc.code() in RETRYABLE else None
        if delay is None:
            if self._fail is None:
                raise exc
            raise self._fail(exc) from None
        return max(delay, retry_after(exc))
