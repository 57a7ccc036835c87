"""The queue wire format: msgpack maps with short keys and a version field.

Two pairs of functions turn jobs and replies into bytes and back; every
decoding failure becomes one error type, :class:`WireError`. Vectors travel as
raw little-endian float32 bytes, never as lists of floats. Pickle is never used,
so a forged entry can at worst fail to decode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

VERSION = 1


class WireError(ValueError):
    """A payload that is not a valid embedstream message of this version."""


@dataclass(slots=True)
class Job:
    """One request as it waits in a model's queue."""

    id: str
    reply_to: str
    deadline_ms: int
    enqueued_ms: int
    texts: list[str]
    normalize: bool | None = None
    truncate: bool = True
    #: For a chunk of an async job: the job id and the chunk's index (else "" / -1).
    job_id: str = ""
    chunk: int = -1


@dataclass(slots=True)
class Reply:
    """A worker's answer to one job: vectors, or an error code and message."""

    id: str
    vectors: bytes = b""
    dimensions: int = 0
    count: int = 0
    tokens: int = 0
    truncated: int = 0
    queue_ms: float = 0.0
    inference_ms: float = 0.0
    worker: str = ""
    error_code: str = ""
    error_message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the reply carries vectors rather than an error."""
        return not self.error_code


def encode_job(job: Job) -> bytes:
    """Serialize a job for XADD."""
    body: dict[str, Any] = {
        "v": VERSION,
        "i": job.id,
        "r": job.reply_to,
        "d": job.deadline_ms,
        "q": job.enqueued_ms,
        "t": job.texts,
        "u": job.truncate,
    }
    if job.normalize is not None:
        body["n"] = job.normalize
    if job.job_id:
        body["j"] = job.job_id
        body["k"] = job.chunk
    return _pack(body)


def decode_job(data: bytes) -> Job:
    """Parse a job payload; any malformation raises :class:`WireError`."""
    body = _unpack(data)
    try:
        texts = body["t"]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise WireError("job texts must be a list of strings")
        normalize = body.get("n")
        if normalize is not None and not isinstance(normalize, bool):
            raise WireError("job normalize must be a bool")
        return Job(
            id=_typed(body["i"], str, "i"),
            reply_to=_typed(body["r"], str, "r"),
            deadline_ms=_typed(body["d"], int, "d"),
            enqueued_ms=_typed(body["q"], int, "q"),
            texts=texts,
            normalize=normalize,
            truncate=_typed(body.get("u", True), bool, "u"),
            job_id=_typed(body.get("j", ""), str, "j"),
            chunk=_typed(body.get("k", -1), int, "k"),
        )
    except KeyError as exc:
        raise WireError(f"job lacks field {exc.args[0]!r}") from None


def encode_reply(reply: Reply) -> bytes:
    """Serialize a reply for the gateway's reply stream."""
    body: dict[str, Any] = {"v": VERSION, "i": reply.id, "w": reply.worker}
    if reply.error_code:
        body["e"] = reply.error_code
        body["m"] = reply.error_message
    else:
        body.update(
            x=reply.vectors,
            dm=reply.dimensions,
            c=reply.count,
            tk=reply.tokens,
            tr=reply.truncated,
            qm=reply.queue_ms,
            im=reply.inference_ms,
        )
    return _pack(body)


def decode_reply(data: bytes) -> Reply:
    """Parse a reply payload; any malformation raises :class:`WireError`."""
    body = _unpack(data)
    try:
        reply = Reply(id=_typed(body["i"], str, "i"), worker=str(body.get("w", "")))
        if "e" in body:
            reply.error_code = _typed(body["e"], str, "e")
            reply.error_message = str(body.get("m", ""))
            return reply
        reply.vectors = _typed(body["x"], bytes, "x")
        reply.dimensions = _typed(body["dm"], int, "dm")
        reply.count = _typed(body["c"], int, "c")
        reply.tokens = int(body.get("tk", 0))
        reply.truncated = int(body.get("tr", 0))
        reply.queue_ms = float(body.get("qm", 0.0))
        reply.inference_ms = float(body.get("im", 0.0))
    except KeyError as exc:
        raise WireError(f"reply lacks field {exc.args[0]!r}") from None
    if len(reply.vectors) != reply.count * reply.dimensions * 4:
        raise WireError("reply vector bytes do not match count x dimensions")
    return reply


def _pack(body: dict[str, Any]) -> bytes:
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


def _unpack(data: bytes) -> dict[str, Any]:
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise WireError(f"not msgpack: {type(exc).__name__}") from None
    if not isinstance(body, dict):
        raise WireError("payload is not a map")
    if body.get("v") != VERSION:
        raise WireError(f"unsupported wire version {body.get('v')!r}")
    return body


def _typed(value: Any, kind: type, key: str) -> Any:
    # bool is an int subclass; a bool where an int belongs is still malformed.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise WireError(f"field {key!r} must be {kind.__name__}")
    return value
