"""The queue wire format: round trips, and every malformation is one error type."""

from __future__ import annotations

import pickle

import msgpack
import numpy as np
import pytest

from embedstream import wire


def test_job_round_trip() -> None:
    job = wire.Job("id1", "reply", 123, 100, ["a", "b é"], normalize=False, truncate=False)
    assert wire.decode_job(wire.encode_job(job)) == job
    plain = wire.Job("id2", "reply", 5, 1, ["x"])
    assert wire.decode_job(wire.encode_job(plain)).normalize is None


def test_reply_round_trip_carries_raw_little_endian_vectors() -> None:
    vecs = np.arange(6, dtype="<f4").reshape(2, 3)
    reply = wire.Reply("id", vectors=vecs.tobytes(), dimensions=3, count=2, tokens=9, worker="w")
    back = wire.decode_reply(wire.encode_reply(reply))
    assert back.ok and back.tokens == 9 and back.worker == "w"
    assert np.array_equal(np.frombuffer(back.vectors, dtype="<f4").reshape(2, 3), vecs)
    err = wire.decode_reply(wire.encode_reply(wire.Reply("id", error_code="INTERNAL", error_message="m")))
    assert not err.ok and err.error_message == "m"


def test_trace_context_is_optional_and_round_trips() -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    traced = wire.Job("id", "reply", 5, 1, ["x"], trace=parent)
    assert msgpack.unpackb(wire.encode_job(traced))["tr"] == parent
    assert wire.decode_job(wire.encode_job(traced)).trace == parent
    assert "tr" not in msgpack.unpackb(wire.encode_job(wire.Job("id", "reply", 5, 1, ["x"])))
    # An entry queued before traces existed (or by a gateway with tracing off) still decodes.
    old = msgpack.packb({"v": 1, "i": "id", "r": "reply", "d": 5, "q": 1, "t": ["x"], "u": True})
    assert wire.decode_job(old) == wire.Job("id", "reply", 5, 1, ["x"])


def test_the_cache_mode_scope_and_count_round_trip_and_are_left_out_when_unset() -> None:
    job = wire.Job("id", "reply", 5, 1, ["x"], cache="refresh", cache_scope="acme")
    assert wire.decode_job(wire.encode_job(job)) == job
    assert not {"ca", "sc"} & set(msgpack.unpackb(wire.encode_job(wire.Job("id", "reply", 5, 1, ["x"]))))
    reply = wire.Reply("id", vectors=bytes(8), dimensions=2, count=1, cached=1)
    assert wire.decode_reply(wire.encode_reply(reply)).cached == 1
    assert wire.decode_reply(wire.encode_reply(wire.Reply("id", vectors=bytes(8), dimensions=2, count=1))).cached == 0


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",
        pickle.dumps({"v": 1}),
        msgpack.packb([1, 2]),
        msgpack.packb({"v": 2, "i": "x"}),
        msgpack.packb({"v": 1, "i": "x", "r": "r", "d": 1, "q": 1}),
        msgpack.packb({"v": 1, "i": "x", "r": "r", "d": "soon", "q": 1, "t": ["a"]}),
        msgpack.packb({"v": 1, "i": "x", "r": "r", "d": True, "q": 1, "t": ["a"]}),
        msgpack.packb({"v": 1, "i": "x", "r": "r", "d": 1, "q": 1, "t": ["a", 3]}),
        msgpack.packb({"v": 1, "i": "x", "r": "r", "d": 1, "q": 1, "t": ["a"], "n": "yes"}),
        msgpack.packb({"v": 1, "i": "x", "r": "r", "d": 1, "q": 1, "t": ["a"], "tr": 7}),
        msgpack.packb({"v": 1, "i": "x", "r": "r", "d": 1, "q": 1, "t": ["a"], "ca": "sometimes"}),
        msgpack.packb({"v": 1, "i": "x", "r": "r", "d": 1, "q": 1, "t": ["a"], "sc": 3}),
    ],
)
def test_malformed_jobs_raise_wire_error(payload: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.decode_job(payload)


def test_reply_with_wrong_vector_length_is_rejected() -> None:
    bad = wire.encode_reply(wire.Reply("id", vectors=b"\0" * 8, dimensions=3, count=1))
    with pytest.raises(wire.WireError):
        wire.decode_reply(bad)
