"""Requests that are not valid protobuf get INVALID_ARGUMENT, not UNKNOWN.

gRPC decodes each message before the handler runs, and a decode failure (invalid
UTF-8 in a string field, a truncated message) surfaces as an UNKNOWN status that
names a Python exception. This interceptor gives every method a deserializer that
turns such a message into :class:`Undecodable`; the first handler-side look at it
answers INVALID_ARGUMENT naming the message type and the reason, whether it came
as a unary request or as the Nth message of a stream.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from embedstream.errors import InvalidArgument
from embedstream.gateway.handlers import kind


class Undecodable:
    """Stands in for a request message that could not be parsed."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _tolerant(deserializer: Callable[[bytes], Any], type_name: str) -> Callable[[bytes], Any]:
    def decode(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except DecodeError as exc:
            return Undecodable(f"request is not a valid {type_name}: {exc}")

    return decode


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    n = 0
    async for request in requests:
        if isinstance(request, Undecodable):
            raise InvalidArgument(f"message {n} of the stream: {request.reason}")
        n += 1
        yield request


def _type_name(deserializer: Callable[[bytes], Any]) -> str:
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return descriptor.full_name if descriptor is not None else "message"


class DecodeGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps each method handler so a message that does not parse is INVALID_ARGUMENT."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        decode = _tolerant(handler.request_deserializer, _type_name(handler.request_deserializer))
        shape = kind(handler)
        wrap = _streamed if handler.request_streaming else _unary
        return handler._replace(request_deserializer=decode, **{shape: wrap(getattr(handler, shape))})


def _unary(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behaviour):

        async def stream_out(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if isinstance(request, Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
            async for response in behaviour(request, context):
                yield response

        return stream_out

    async def single(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
        return await behaviour(request, context)

    return single


def _streamed(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    # The handlers read their requests with `async for`; the wrapped iterator raises
    # InvalidArgument at the bad message, which they answer like any validation error.
    if inspect.isasyncgenfunction(behaviour):

        async def stream_out(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for response in behaviour(_checked(requests), context):
                yield response

        return stream_out

    async def single(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        return await behaviour(_checked(requests), context)

    return single
