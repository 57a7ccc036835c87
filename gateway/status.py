"""The one place where errors become gRPC status codes, and HTTP statuses beside them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar

import grpc

from embedstream import metrics
from embedstream.errors import CLIP, Code, EmbedstreamError, ResourceExhausted, TooLarge, Unavailable

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


#: The HTTP status of each code, as OpenAI's, Cohere's and TEI's APIs answer; TooLarge is 413.
#: 499 is the status nginx logs for a client that left (the client never sees it).
HTTP_STATUS: dict[Code, int] = {
    Code.INVALID_ARGUMENT: 400,
    Code.UNAUTHENTICATED: 401,
    Code.PERMISSION_DENIED: 403,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    # A model its workers refused to load: a server-side state no retry mends until an operator acts.
    Code.FAILED_PRECONDITION: 503,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.CANCELLED: 499,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DEADLINE_EXCEEDED: 504,
}
#: Seconds a 503 asks the caller to wait: Redis or a model's workers come back within a few.
UNAVAILABLE_RETRY_S = 1


def to_error(exc: BaseException) -> EmbedstreamError:
    """``exc`` as the error a client sees (gRPC status or HTTP status); never UNKNOWN."""
    if isinstance(exc, EmbedstreamError):
        return exc
    code, message = to_status(exc)
    return EmbedstreamError.from_code(code.name, message)


def http_status(exc: EmbedstreamError) -> int:
    """The HTTP status of ``exc``."""
    return 413 if isinstance(exc, TooLarge) else HTTP_STATUS[exc.code]


def http_headers(exc: EmbedstreamError) -> dict[str, str]:
    """``Retry-After`` (whole seconds, RFC 9110) for 429 and 503, and ``retry-after-ms``, which
    the OpenAI SDKs read first, when the gateway knows the delay to the millisecond."""
    if isinstance(exc, ResourceExhausted):
        ms = max(1, exc.retry_after_ms)
        return {"Retry-After": str(-(-ms // 1000)), "retry-after-ms": str(ms)}
    if isinstance(exc, Unavailable):
        return {"Retry-After": str(UNAVAILABLE_RETRY_S)}
    return {}


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
