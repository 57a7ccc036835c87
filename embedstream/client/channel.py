"""Channels: options, gateway address lists, and the ``authorization: Bearer`` interceptors."""

from __future__ import annotations

import collections
import json
import os
from typing import Any

import grpc

from embedstream.tls import TLS

#: Channel options of every client: exported so that code building its own channel (other
#: stubs, tests) spreads and drains calls the same way.
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # round_robin over every gateway address, skipping a gateway whose gRPC health (service
    # "") is not SERVING: one draining after SIGTERM, or one that lost Redis, gets no new
    # calls while it says so, instead of calls racing its shutdown.
    (
        "grpc.service_config",
        json.dumps({"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}}),
    ),
    # A gateway host that vanishes (power, network) sends no FIN: pings find it within
    # ~15 s, its calls fail UNAVAILABLE (retried on another gateway) and round_robin drops it.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


def api_key_or_env(api_key: str | None) -> str:
    """The key to send: the argument, else ``EMBEDSTREAM_API_KEY``; empty sends none."""
    return os.environ.get("EMBEDSTREAM_API_KEY", "") if api_key is None else api_key


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,  # type: ignore[misc]
):
    pass


class Bearer(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds ``authorization: Bearer <key>`` to every call of a blocking channel."""

    def __init__(self, key: str) -> None:
        self.header = ("authorization", f"Bearer {key}")

    def _details(self, details: Any) -> _CallDetails:
        metadata = [*(details.metadata or ()), self.header]
        return _CallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready, details.compression
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)

    intercept_unary_stream = intercept_unary_unary
    intercept_stream_stream = intercept_stream_unary


class _AioBearer:
    """Adds ``authorization: Bearer <key>`` to the calls of an asyncio channel, one kind per instance."""

    def __init__(self, key: str) -> None:
        self.header = ("authorization", f"Bearer {key}")

    async def _intercept(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(
            details._replace(metadata=grpc.aio.Metadata(*(details.metadata or ()), self.header)), request
        )

    intercept_unary_unary = intercept_unary_stream = intercept_stream_unary = intercept_stream_stream = _intercept


def aio_bearer(key: str) -> list[Any]:
    """Interceptors adding ``authorization: Bearer <key>`` to every call of an asyncio channel."""
    # grpc.aio files each interceptor under the first kind it is an instance of: one object per kind.
    kinds = (
        grpc.aio.UnaryUnaryClientInterceptor,
        grpc.aio.UnaryStreamClientInterceptor,
        grpc.aio.StreamUnaryClientInterceptor,
        grpc.aio.StreamStreamClientInterceptor,
    )
    return [type(kind.__name__, (_AioBearer, kind), {})(key) for kind in kinds]


def dial(api: Any, target: str, tls: TLS | None, **kwargs: Any) -> Any:
    """A channel to ``target`` made by ``api`` (``grpc`` or ``grpc.aio``) with :data:`CHANNEL_OPTIONS` and ``tls``."""
    options = CHANNEL_OPTIONS + (tls.options() if tls else [])
    if tls is None:
        return api.insecure_channel(channel_target(target), options=options, **kwargs)
    return api.secure_channel(channel_target(target), tls.credentials(), options=options, **kwargs)


def channel_target(target: str) -> str:
    """``target`` as gRPC dials it."""
    # localhost resolves to ::1 first on most machines while the gateway binds 127.0.0.1 by
    # default: dialling IPv4 keeps an IPv6 "Connection refused" out of a working setup.
    target = ",".join(ipv4_localhost(t) for t in target.split(","))
    # Several addresses become one round-robin channel over all gateways.
    if "," in target:
        return "ipv4:" + target if not target.startswith(("ipv4:", "ipv6:", "dns:")) else target
    return target


def ipv4_localhost(address: str) -> str:
    """``address`` with a ``localhost`` host dialled as 127.0.0.1."""
    host, sep, port = address.strip().rpartition(":")
    return f"127.0.0.1:{port}" if sep and host in ("localhost", "dns:localhost", "dns:///localhost") else address
