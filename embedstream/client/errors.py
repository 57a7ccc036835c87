"""One error for every failed client call: ``EmbedstreamError``, and how a gRPC failure becomes one."""

from __future__ import annotations

import re
from typing import Any

import grpc

from embedstream.client.channel import ipv4_localhost
from embedstream.tls import TLS

#: Phrases of a status made by the channel itself (no gateway answered), not sent by a gateway.
_CHANNEL_SIDE = (
    "connections to all backends failing",
    "failed to connect to all addresses",
    "Failed to connect to remote host",
    "DNS resolution failed",
    "Socket closed",
)
#: The longest a failed call waits to learn the gateway's reason from its health service.
PROBE_TIMEOUT_S = 1.0


class EmbedstreamError(grpc.RpcError):  # type: ignore[misc]
    """A call that failed for good: the gRPC status name, the gateway's message, and why when known.

    ``str()`` is one line (``UNAVAILABLE: cannot reach the gateway at 127.0.0.1:50051: connection
    refused``). It is a ``grpc.RpcError`` with ``code()``, ``details()`` and
    ``trailing_metadata()``, so code that caught the raw gRPC error keeps working.
    """

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "", trailers: Any = ()) -> None:
        self.status = code
        self.message = " ".join(message.split())
        self.reason = " ".join(reason.split())
        self._trailers = tuple(trailers or ())
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.status.name}: {self.reason or self.message}"

    def __repr__(self) -> str:
        return f"EmbedstreamError({self.status.name}, {self.message!r}, reason={self.reason!r})"

    def code(self) -> grpc.StatusCode:
        """The gRPC status code."""
        return self.status

    def details(self) -> str:
        """The message as the gateway (or the channel) gave it."""
        return self.message

    def trailing_metadata(self) -> tuple[Any, ...]:
        """The failed call's trailing metadata (``retry-after-ms`` and the like)."""
        return self._trailers


class Explainer:
    """Turns the last gRPC error of a call into an :class:`EmbedstreamError` for ``target``."""

    def __init__(self, target: str, tls: TLS | None) -> None:
        self.target = target
        self.tls = tls

    def __call__(self, exc: grpc.RpcError) -> EmbedstreamError:
        """The error to raise for ``exc``, with the gateway's reason when the channel gave none."""
        if isinstance(exc, EmbedstreamError):
            return exc
        code, message = exc.code(), exc.details() or ""
        trailers = _trailers(exc)
        if not self.target or code != grpc.StatusCode.UNAVAILABLE or not any(p in message for p in _CHANNEL_SIDE):
            return EmbedstreamError(code, message, "", trailers)
        return EmbedstreamError(code, message, self.reason(message), trailers)

    def reason(self, message: str) -> str:
        """Why no gateway answered: asked of the first gateway's health service (at most ~1 s)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        first = ipv4_localhost(self.target.split(",")[0].removeprefix("ipv4:").removeprefix("ipv6:"))
        # A plain channel: the clients' own channel skips a gateway whose health is not SERVING,
        # which is exactly the gateway whose answer is wanted here.
        options = self.tls.options() if self.tls else []
        creds = self.tls.credentials() if self.tls else None
        channel = grpc.secure_channel(first, creds, options) if creds else grpc.insecure_channel(first, options)
        with channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=PROBE_TIMEOUT_S
                )
            except grpc.RpcError as probe:
                return f"cannot reach the gateway at {first}: {_cause(probe.details() or message)}"
        if reply.status == health_pb2.HealthCheckResponse.SERVING:
            return f"the gateway at {first} is up again; the call failed while it was not: {_cause(message)}"
        return f"the gateway at {first} is up but NOT_SERVING: it cannot reach its queue (Redis) or is shutting down"


def _cause(message: str) -> str:
    """The last, most specific part of a channel error, lower-cased like an errno text."""
    if "Connection refused" in message:
        return "connection refused"
    if "DNS resolution failed" in message:
        return "the host name does not resolve"
    if "Deadline" in message or "deadline" in message.lower():
        return "no answer in time"
    last = re.split(r":\s+", message.strip())[-1]
    return last[:1].lower() + last[1:] if last else message


def _trailers(exc: grpc.RpcError) -> tuple[Any, ...]:
    try:
        return tuple(exc.trailing_metadata() or ())
    except Exception:  # an aio error may have none to give
        return ()
