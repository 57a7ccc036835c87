"""The gateway's spans: one SERVER span per embedstream.v1 call, one child per stream message.

Installed only when tracing is on (``embedstream.tracing``). The interceptor is
the outermost one, so calls the guard refuses are traced too and its log lines
carry the call's trace id. Each span records the gRPC status its call ended
with; the handlers add the model and input count (``Dispatcher.embed``, jobs).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from embedstream import replywire, tracing
from embedstream.errors import EmbedstreamError
from embedstream.gateway.auth import current_tenant
from embedstream.gateway.guard import GUARDED
from embedstream.gateway.handlers import kind

#: Codes that mean the server failed (OpenTelemetry's gRPC conventions); others are the caller's.
SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


class Spans(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps each embedstream.v1 handler in a SERVER span that continues the caller's trace."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(GUARDED):
            return handler
        service, _, method = details.method.lstrip("/").partition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
        name, metadata = f"{service}/{method}", details.invocation_metadata
        shape = kind(handler)
        inner = getattr(handler, shape)

        async def single(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with tracing.server_span(name, metadata, attributes):
                try:
                    response = await inner(request, context)
                except BaseException as exc:
                    _ended(context, exc)
                    raise
                _ended(context, None)
                return response

        async def streamed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            with tracing.server_span(name, metadata, attributes):
                try:
                    async for response in inner(request, context):
                        yield response
                except BaseException as exc:
                    _ended(context, exc)
                    raise
                _ended(context, None)

        return handler._replace(**{shape: streamed if handler.response_streaming else single})


def _ended(context: grpc.aio.ServicerContext, exc: BaseException | None) -> None:
    """Record the status the call ends with (set by ``context.abort``, or implied)."""
    code = context.code()
    if not isinstance(code, grpc.StatusCode):
        code = _code(exc) if exc is not None else grpc.StatusCode.OK
    _status(code, context.details() or "")
    tracing.annotate({"embedstream.tenant": current_tenant()})


def _code(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, EmbedstreamError):
        return grpc.StatusCode[exc.code.value]
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


def _status(code: grpc.StatusCode, message: str) -> None:
    tracing.annotate({"rpc.grpc.status_code": code.value[0]})
    if code in SERVER_ERRORS:
        tracing.fail(f"{code.name}: {message}" if message else code.name)


async def message(name: str, call: Awaitable[replywire.Reply]) -> replywire.Reply:
    """Await one stream message's reply inside a child span of the stream's span: the
    message's queue entry carries this span, so its worker span hangs under it."""
    with tracing.child_span(name):
        try:
            reply = await call
        except BaseException as exc:
            _status(_code(exc), exc.message if isinstance(exc, EmbedstreamError) else type(exc).__name__)
            raise
        if reply.error_code:
            _status(getattr(grpc.StatusCode, reply.error_code, grpc.StatusCode.UNKNOWN), reply.error_message)
        else:
            _status(grpc.StatusCode.OK, "")
        return reply
