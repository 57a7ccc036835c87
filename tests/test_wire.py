"""The queue wire format: round trips, and every malformation is one error type."""

from __future__ import annotations

import pickle

import msgpack
import numpy as np
import pytest

from embedstream import framing, replywire, wire
from embedstream.textwire import TokenList


def test_job_round_trip() -> None:
    job = wire.Job("id1", "reply", 123, 100, ["a", "b é"], normalize=False, truncate=False)
    assert wire.decode_job(wire.encode_job(job)) == job
    plain = wire.Job("id2", "reply", 5, 1, ["x"])
    assert wire.decode_job(wire.encode_job(plain)).normalize is None


def test_reply_round_trip_carries_raw_little_endian_vectors() -> None:
    vecs = np.arange(6, dtype="<f4").reshape(2, 3)
    reply = replywire.Reply("id", vectors=vecs.tobytes(), dimensions=3, count=2, tokens=9, worker="w")
    back = replywire.decode_reply(replywire.encode_reply(reply))
    assert back.ok and back.tokens == 9 and back.worker == "w"
    assert np.array_equal(np.frombuffer(back.vectors, dtype="<f4").reshape(2, 3), vecs)
    err = replywire.decode_reply(
        replywire.encode_reply(replywire.Reply("id", error_code="INTERNAL", error_message="m"))
    )
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
    reply = replywire.Reply("id", vectors=bytes(8), dimensions=2, count=1, cached=1)
    assert replywire.decode_reply(replywire.encode_reply(reply)).cached == 1
    assert (
        replywire.decode_reply(
            replywire.encode_reply(replywire.Reply("id", vectors=bytes(8), dimensions=2, count=1))
        ).cached
        == 0
    )


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
    bad = replywire.encode_reply(replywire.Reply("id", vectors=b"\0" * 8, dimensions=3, count=1))
    with pytest.raises(wire.WireError):
        replywire.decode_reply(bad)


def test_named_outputs_round_trip_each_in_its_own_fields() -> None:
    job = wire.Job("j", "r", 1, 0, ["a", "b"], outputs=("sparse", "multi-vector"))
    assert wire.decode_job(wire.encode_job(job)).outputs == ("sparse", "multi-vector")
    assert wire.decode_job(wire.encode_job(wire.Job("j", "r", 1, 0, ["a"]))).outputs == ()
    reply = replywire.Reply("j", count=2, outputs=["dense", "sparse", "multi-vector"], dimensions=2)
    reply.vectors = np.ones((2, 2), "<f4").tobytes()
    reply.nnz, reply.indices, reply.sparse_weights = [1, 0], np.array([7], "<u4").tobytes(), b"\0\0\x80?"
    reply.multi, reply.multi_rows, reply.multi_dimensions = np.ones((3, 4), "<f4").tobytes(), [1, 2], 4
    back = replywire.decode_reply(replywire.encode_reply(reply))
    assert (back.outputs, back.nnz, back.multi_rows, back.multi_dimensions) == (reply.outputs, [1, 0], [1, 2], 4)
    assert back.sparse_weights == reply.sparse_weights and back.multi == reply.multi
    for broken in ({"multi_rows": [1]}, {"sparse_weights": b""}, {"outputs": ["dense"]}):
        bad = replywire.Reply(**{**{f: getattr(reply, f) for f in replywire.Reply.__slots__}, **broken})
        with pytest.raises(wire.WireError):
            replywire.decode_reply(replywire.encode_reply(bad))
    with pytest.raises(wire.WireError, match="'os'"):
        wire.decode_job(msgpack.packb({"v": 4, "i": "j", "r": "r", "d": 1, "q": 0, "t": ["a"], "os": ["colbert"]}))


def test_named_outputs_carry_version_4_beside_text_options() -> None:
    # A worker from before outputs refuses the entry instead of answering the primary output alone.
    job = wire.Job("j", "r", 1, 0, [[101, 7, 102]], outputs=("sparse",), truncation_side="left")
    body = msgpack.unpackb(wire.encode_job(job))
    assert body["v"] == framing.VERSION_OUTPUTS and body["sd"] == "left"
    assert wire.decode_job(wire.encode_job(job)) == job
    chunked = wire.Job("j", "r", 1, 0, ["a"], outputs=("dense",), chunking=True)
    assert msgpack.unpackb(wire.encode_job(chunked))["v"] == framing.VERSION_OUTPUTS
    reply = replywire.Reply("j", count=1, outputs=["dense"], dimensions=1, vectors=b"\0" * 4, spans=[0, 0, 1, 0, 1])
    assert msgpack.unpackb(replywire.encode_reply(reply))["v"] == framing.VERSION_OUTPUTS
    assert replywire.decode_reply(replywire.encode_reply(reply)).outputs == ["dense"]


def test_text_operations_round_trip_as_version_3() -> None:
    job = wire.Job(
        "id", "reply", 5, 1, ["a text", [101, 7592, 102]], kind="tokenize", truncation_side="left", special_tokens=False
    )
    body = msgpack.unpackb(wire.encode_job(job))
    assert body["v"] == framing.VERSION_TEXT and body["kd"] == "tokenize" and body["sd"] == "left"
    assert wire.decode_job(wire.encode_job(job)) == job
    classify = wire.Job("id", "reply", 5, 1, ["x"], function="sigmoid", return_logits=True)
    assert wire.decode_job(wire.encode_job(classify)) == classify
    # A plain embedding entry keeps the version an older worker reads.
    assert msgpack.unpackb(wire.encode_job(wire.Job("id", "reply", 5, 1, ["x"])))["v"] == framing.VERSION
    lists = [TokenList([101, 7592, 102], ["[CLS]", "hello", "[SEP]"], [0, 0, 0, 5, 0, 0], [1, 0, 1], 3)]
    tokenized = replywire.decode_reply(replywire.encode_reply(replywire.Reply("id", count=1, token_lists=lists)))
    assert tokenized.token_lists == lists
    assert replywire.decode_reply(replywire.encode_reply(replywire.Reply("id", count=2, texts=["a", "b"]))).texts == [
        "a",
        "b",
    ]
    scores = np.ones((2, 3), "<f4").tobytes()
    labelled = replywire.Reply("id", vectors=scores, dimensions=3, count=2, labels=["a", "b", "c"], logits=scores)
    back = replywire.decode_reply(replywire.encode_reply(labelled))
    assert back.labels == ["a", "b", "c"] and back.logits == scores


TEXT_JOB = {"v": 3, "i": "x", "r": "r", "d": 1, "q": 1, "t": ["a"]}


@pytest.mark.parametrize(
    "fields",
    [
        {"t": [[1, -2]]},
        {"t": [[1, True]]},
        {"t": [[2**32]]},
        {"kd": "summarize"},
        {"sd": "middle"},
        {"sp": "yes"},
        {"fn": "tanh"},
        {"lg": 1},
    ],
)
def test_malformed_text_options_raise_wire_error(fields: dict[str, object]) -> None:
    with pytest.raises(wire.WireError):
        wire.decode_job(msgpack.packb({**TEXT_JOB, **fields}))


@pytest.mark.parametrize(
    "reply",
    [
        replywire.Reply("id", count=2, texts=["only one"]),
        replywire.Reply("id", count=1, token_lists=[TokenList([1, 2], ["a"], [0, 1, 1, 2], [0, 0], 2)]),
        replywire.Reply("id", vectors=b"\0" * 8, dimensions=2, count=1, labels=["a"]),
        replywire.Reply("id", vectors=b"\0" * 8, dimensions=2, count=1, labels=["a", "b"], logits=b"\0" * 4),
    ],
)
def test_text_replies_that_do_not_add_up_raise_wire_error(reply: replywire.Reply) -> None:
    with pytest.raises(wire.WireError):
        replywire.decode_reply(replywire.encode_reply(reply))
