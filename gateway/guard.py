"""The server interceptor in front of every embedstream.v1 RPC: API key, tenant, rate limit.

It runs before the servicer sees any request message: a call without a valid
key gets a handler that reads nothing (not even deserializing its request)
and ends with UNAUTHENTICATED. An accepted call runs with its tenant in
:data:`gateway.auth.TENANT` and is charged to the tenant's rate limit: unary
requests up front (RESOURCE_EXHAUSTED with ``retry-after-ms`` when over), each
message of a client stream as it is read (the stream slows down to the limit).
Health and reflection stay open, so probes and ``grpcurl list`` need no key.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc

from embedstream import metrics
from embedstream.apikeys import Entry
from embedstream.errors import EmbedstreamError
from embedstream.gateway.auth import DEFAULT_TENANT, TENANT, Keyring, bearer
from embedstream.gateway.handlers import kind
from embedstream.gateway.ratelimit import Limit, RateLimiter
from embedstream.gateway.status import trailing

log = logging.getLogger(__name__)

#: Methods under this prefix need a key; all others (health, reflection) do not.
GUARDED = "/embedstream.v1."


def cost(message: Any) -> int:
    """Inputs a request message charges to its tenant: its inputs or documents, at least 1."""
    if hasattr(message, "chunk"):  # UploadJobRequest: a header (costs 1), then chunks of inputs
        message = message.chunk
    for field in ("inputs", "documents"):
        if hasattr(message, field):
            return max(1, len(getattr(message, field)))
    return 1


class Guard(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authenticates, sets the tenant and applies rate limits."""

    def __init__(self, keyring: Keyring, limiter: RateLimiter) -> None:
        self.keyring = keyring
        self.limiter = limiter

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(GUARDED):
            return handler
        try:
            tenant, limit = self.identify(details.invocation_metadata)
        except EmbedstreamError as exc:
            return _refusal(handler, details.method, exc)
        if not self.keyring.enabled and limit.rate <= 0:
            return handler  # auth and limits off: the default tenant, nothing to charge
        return _Call(tenant, limit, self.limiter).wrap(handler)

    def identify(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> tuple[str, Limit]:
        """The caller's tenant and its limit, from ``authorization: Bearer <key>`` in ``metadata``
        (gRPC metadata or HTTP headers, names in lower case); Unauthenticated when keys are on and
        the key is missing, malformed, unknown or revoked."""
        entry: Entry | None = None
        if self.keyring.enabled:
            entry = self.keyring.authenticate(bearer(metadata))
        return (entry.tenant if entry else DEFAULT_TENANT), self.keyring.limit(entry)


class _Call:
    """One accepted call's tenant and budget, wrapped around the servicer's behavior."""

    def __init__(self, tenant: str, limit: Limit, limiter: RateLimiter) -> None:
        self.tenant = tenant
        self.limit = limit
        self.limiter = limiter

    def wrap(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        shape = kind(handler)
        return handler._replace(**{shape: getattr(self, f"_{shape}")(getattr(handler, shape))})

    async def _admit(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        TENANT.set(self.tenant)
        try:
            await self.limiter.admit(self.tenant, self.limit, cost(request))
        except EmbedstreamError as exc:
            await context.abort(grpc.StatusCode[exc.code.value], exc.message, trailing(exc))

    def _metered(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        return requests if self.limit.rate <= 0 else self._throttled(requests, context)

    async def _throttled(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for request in requests:
            await self.limiter.throttle(self.tenant, self.limit, cost(request), context.time_remaining())
            yield request

    def _unary_unary(self, inner: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await self._admit(request, context)
            return await inner(request, context)

        return behavior

    def _unary_stream(self, inner: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await self._admit(request, context)
            async for response in inner(request, context):
                yield response

        return behavior

    def _stream_unary(self, inner: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def behavior(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            TENANT.set(self.tenant)
            return await inner(self._metered(requests, context), context)

        return behavior

    def _stream_stream(self, inner: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def behavior(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            TENANT.set(self.tenant)
            async for response in inner(self._metered(requests, context), context):
                yield response

        return behavior


def refused(method: str, peer: str, exc: EmbedstreamError) -> None:
    """Count and log a call refused for its key (the log never holds the key)."""
    metrics.AUTH_REFUSED.inc()
    log.info("refused %s from %s: %s", method, peer, exc.message)


def _refusal(handler: grpc.RpcMethodHandler, method: str, exc: EmbedstreamError) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s kind that reads no request and ends with ``exc``'s status."""

    async def refuse(request: object, context: grpc.aio.ServicerContext) -> None:
        refused(method, context.peer(), exc)
        await context.abort(grpc.StatusCode[exc.code.value], exc.message)

    make: Callable[..., grpc.RpcMethodHandler] = getattr(grpc, f"{kind(handler)}_rpc_method_handler")
    return make(refuse)
