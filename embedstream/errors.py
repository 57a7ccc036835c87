"""The one error hierarchy of embedstream; the gateway maps it to gRPC status codes."""

from __future__ import annotations

import enum


class Code(str, enum.Enum):
    """Failure kinds; names equal grpc.StatusCode names so mapping is one lookup."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAVAILABLE = "UNAVAILABLE"
    CANCELLED = "CANCELLED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    INTERNAL = "INTERNAL"


class EmbedstreamError(Exception):
    """Base of every error that reaches a caller with a precise status."""

    code: Code = Code.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata the caller gets with the status (a retry hint, say)."""
        return ()

    @staticmethod
    def from_code(code: str, message: str) -> EmbedstreamError:
        """Rebuild an error that crossed a process boundary as (code, message)."""
        cls = _BY_CODE.get(code, InternalError)
        return cls(message)


class InvalidArgument(EmbedstreamError):
    code = Code.INVALID_ARGUMENT


class TooLarge(InvalidArgument):
    """Over a size limit (inputs per request, bytes per text, request body): INVALID_ARGUMENT in
    gRPC, 413 over HTTP."""


class NotFound(EmbedstreamError):
    code = Code.NOT_FOUND


class AlreadyExists(EmbedstreamError):
    code = Code.ALREADY_EXISTS


class Unauthenticated(EmbedstreamError):
    code = Code.UNAUTHENTICATED


class ResourceExhausted(EmbedstreamError):
    """Over a limit; ``retry_after_ms`` (when known) says when a retry may pass."""

    code = Code.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_ms: int = 0) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("retry-after-ms", str(self.retry_after_ms)),) if self.retry_after_ms else ()


class RateLimited(ResourceExhausted):
    """Over the tenant's rate limit; ``retry_after_ms`` says when the call would pass."""


class DeadlineExceeded(EmbedstreamError):
    code = Code.DEADLINE_EXCEEDED


class Unavailable(EmbedstreamError):
    code = Code.UNAVAILABLE


class Cancelled(EmbedstreamError):
    code = Code.CANCELLED


class FailedPrecondition(EmbedstreamError):
    """The call cannot succeed until an operator acts (a model that failed to load)."""

    code = Code.FAILED_PRECONDITION


class InternalError(EmbedstreamError):
    code = Code.INTERNAL


#: The most characters of a caller-supplied string that an error message, log line or span copies.
CLIP = 64


def clip(text: object, limit: int = CLIP) -> str:
    """``text`` quoted (repr) and cut to about ``limit`` characters, saying how much was cut: a caller's
    string in a message must not make the message itself too big for the caller to receive."""
    value = str(text)
    if len(value) <= limit:
        return repr(value)
    return repr(value[:limit]) + f"... ({len(value)} characters)"


class ConfigError(Exception):
    """A bad setting or registry entry; raised at start, names the key."""


_BY_CODE: dict[str, type[EmbedstreamError]] = {
    cls.code.value: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        Unauthenticated,
        ResourceExhausted,
        DeadlineExceeded,
        Unavailable,
        Cancelled,
        FailedPrecondition,
        InternalError,
    )
}
