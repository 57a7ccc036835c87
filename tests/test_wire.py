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
    ],
)
def test_malformed_jobs_raise_wire_error(payload: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.decode_job(payload)


def test_reply_with_wrong_vector_length_is_rejected() -> None:
    bad = wire.encode_reply(wire.Reply("id", vectors=b"\0" * 8, dimensions=3, count=1))
    with pytest.raises(wire.WireError):
        wire.decode_reply(bad)


def test_named_outputs_round_trip_each_in_its_own_fields() -> None:
    job = wire.Job("j", "r", 1, 0, ["a", "b"], outputs=("sparse", "multi-vector"))
    assert wire.decode_job(wire.encode_job(job)).outputs == ("sparse", "multi-vector")
    assert wire.decode_job(wire.encode_job(wire.Job("j", "r", 1, 0, ["a"]))).outputs == ()
    reply = wire.Reply("j", count=2, outputs=["dense", "sparse", "multi-vector"], dimensions=2)
    reply.vectors = np.ones((2, 2), "<f4").tobytes()
    reply.nnz, reply.indices, reply.sparse_weights = [1, 0], np.array([7], "<u4").tobytes(), b"\0\0\x80?"
    reply.multi, reply.multi_rows, reply.multi_dimensions = np.ones((3, 4), "<f4").tobytes(), [1, 2], 4
    back = wire.decode_reply(wire.encode_reply(reply))
    assert (back.outputs, back.nnz, back.multi_rows, back.multi_dimensions) == (reply.outputs, [1, 0], [1, 2], 4)
    assert back.sparse_weights == reply.sparse_weights and back.multi == reply.multi
    for broken in ({"multi_rows": [1]}, {"sparse_weights": b""}, {"outputs": ["dense"]}):
        bad = wire.Reply(**{**{f: getattr(reply, f) for f in wire.Reply.__slots__}, **broken})
        with pytest.raises(wire.WireError):
            wire.decode_reply(wire.encode_reply(bad))
    with pytest.raises(wire.WireError, match="'os'"):
        wire.decode_job(msgpack.packb({"v": 1, "i": "j", "r": "r", "d": 1, "q": 0, "t": ["a"], "os": ["colbert"]}))
