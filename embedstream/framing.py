"""The frame every queue message shares: its version numbers, its one error, fenced msgpack and typed fields.

``embedstream.wire`` (entries) and ``embedstream.replywire`` (replies) build their
maps on these: a payload is a msgpack map with a version field ``v``, packed and
unpacked here, and every field read through a check that turns a wrong type into a
:class:`WireError`. Pickle is never used, so a forged entry can at worst fail to decode.
"""

from __future__ import annotations

from typing import Any

import msgpack

from embedstream.vectors import OUTPUTS

VERSION = 1
#: Entries and replies that use chunking carry this version, so a worker or
#: gateway from before chunking refuses them (dead letter, error) instead of
#: silently truncating; version 1 payloads stay decodable.
VERSION_CHUNKS = 2
#: Entries and replies of the text operations (``embedstream.textwire``): a worker from
#: before them refuses such an entry instead of embedding what it was asked to tokenize.
VERSION_TEXT = 3
#: Entries and replies that name their outputs (``os``): a worker from before them refuses
#: such an entry instead of answering with the primary output alone. An entry's version is
#: that of the newest feature it uses.
VERSION_OUTPUTS = 4
#: Entries holding video or audio, and replies with segments, carry this version, so a worker
#: or gateway from before media (versions up to 4) refuses them instead of taking a video for
#: an image.
VERSION_MEDIA = 5
VERSIONS = (VERSION, VERSION_CHUNKS, VERSION_TEXT, VERSION_OUTPUTS, VERSION_MEDIA)


class WireError(ValueError):
    """A payload that is not a valid embedstream message of this version."""


def pack(body: dict[str, Any]) -> bytes:
    """The bytes of a message map."""
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


def unpack(data: bytes) -> dict[str, Any]:
    """The map of a message of a known version; anything else raises :class:`WireError`."""
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise WireError(f"not msgpack: {type(exc).__name__}") from None
    if not isinstance(body, dict):
        raise WireError("payload is not a map")
    if body.get("v") not in VERSIONS:
        raise WireError(f"unsupported wire version {body.get('v')!r}")
    return body


def typed(value: Any, kind: type, key: str) -> Any:
    """``value`` when it is a ``kind``; else a :class:`WireError` naming ``key``."""
    # bool is an int subclass; a bool where an int belongs is still malformed.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise WireError(f"field {key!r} must be {kind.__name__}")
    return value


def int_list(value: Any, key: str) -> list[int] | None:
    """An optional list of non-negative integers; a malformed one raises :class:`WireError` naming ``key``."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise WireError(f"field {key!r} must be a list of non-negative integers")
    return value


def outputs_field(value: Any) -> tuple[str, ...]:
    """The ``os`` field: distinct names of ``embedstream.vectors.OUTPUTS``."""
    if not isinstance(value, list) or not all(o in OUTPUTS for o in value) or len(set(value)) != len(value):
        raise WireError(f"field 'os' must list distinct outputs of {list(OUTPUTS)}")
    return tuple(value)
