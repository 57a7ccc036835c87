"""The one place where errors become gRPC status codes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar

import grpc

from embedstream import metrics
from embedstream.errors import CLIP, EmbedstreamError

log = logging.getLogger(__name__)

T = TypeVar("T")


def trailing(exc: BaseException) -> tuple[tuple[str, str], ...]:
    """Metadata sent with the status of ``exc`` (a retry hint, say)."""
    return exc.trailing_metadata() if isinstance(exc, EmbedstreamError) else ()


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and message a client sees for ``exc``; never UNKNOWN."""
    if isinstance(exc, EmbedstreamError):
        return grpc.StatusCode[exc.code.value], exc.message
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED, "the call was cancelled"
    log.error("internal error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error; the gateway log has the details"


def unary(rpc: str) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    """Wrap a unary handler: map errors to statuses and count outcomes."""

    def wrap(handler: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @wraps(handler)
        async def run(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
            model = (getattr(request, "model", "") or "-")[:CLIP]
            try:
                result = await handler(self, request, context)
            except asyncio.CancelledError:
                metrics.REQUESTS.labels(rpc, model, "CANCELLED").inc()
                raise
            except Exception as exc:
                code, message = to_status(exc)
                metrics.REQUESTS.labels(rpc, model, code.name).inc()
                log.debug("%s ended %s: %s", rpc, code.name, message)
                await context.abort(code, message, trailing(exc))
            metrics.REQUESTS.labels(rpc, model, "OK").inc()
            return result

        return run

    return wrap


def streaming(rpc: str) -> Callable[[Callable[..., AsyncIterator[T]]], Callable[..., AsyncIterator[T]]]:
    """Wrap a streaming handler the same way as :func:`unary`."""

    def wrap(handler: Callable[..., AsyncIterator[T]]) -> Callable[..., AsyncIterator[T]]:
        @wraps(handler)
        async def run(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[T]:
            try:
                async for item in handler(self, request, context):
                    yield item
            except asyncio.CancelledError:
                metrics.REQUESTS.labels(rpc, "-", "CANCELLED").inc()
                raise
            except Exception as exc:
                code, message = to_status(exc)
                metrics.REQUESTS.labels(rpc, "-", code.name).inc()
                log.debug("%s ended %s: %s", rpc, code.name, message)
                await context.abort(code, message, trailing(exc))
            metrics.REQUESTS.labels(rpc, "-", "OK").inc()

        return run

    return wrap
