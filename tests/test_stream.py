"""EmbedStream: order, exactly-once, correctness, bounded memory, dropping work on cancel."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator

import grpc
import msgpack
import numpy as np
import psutil
import pytest
import redis

from embedstream import keys
from embedstream.v1 import embedder_pb2 as pb
from tests.conftest import Service
from tests.support.corpora import texts
from tests.support.processes import start_gateway, stub

WINDOW = 256


def queued_inputs(r: redis.Redis, model: str) -> int:
    """Inputs in entries still in the model's streams (waiting or being worked)."""
    total = 0
    for _, fields in [entry for lane in keys.lanes(model) for entry in r.xrange(lane)]:
        total += len(msgpack.unpackb(fields[b"p"])["t"])
    return total


def test_stream_10000_texts_in_order_exactly_once(
    service: Service, r: redis.Redis, reference: object, log_dir: object
) -> None:
    distinct = texts(2000, seed=1)
    ref = reference.encode(distinct, batch_size=64)  # type: ignore[attr-defined]
    rng = random.Random(2)
    order = [i for _ in range(5) for i in range(2000)]
    rng.shuffle(order)
    sizes: list[int] = []
    while sum(sizes) < len(order):
        sizes.append(min(rng.randint(1, 16), len(order) - sum(sizes)))
    env = dict(service.env, EMBEDSTREAM_STREAM_WINDOW=str(WINDOW))
    gateway, port = start_gateway(env, log_dir)  # type: ignore[arg-type]
    peak = {"inputs": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak["inputs"] = max(peak["inputs"], queued_inputs(r, "all-MiniLM-L6-v2"))
            time.sleep(0.02)

    def requests() -> Iterator[pb.EmbedRequest]:
        pos = 0
        for k, size in enumerate(sizes):
            chunk = order[pos : pos + size]
            pos += size
            yield pb.EmbedRequest(
                request_id=f"req-{k}",
                inputs=[pb.Input(text=distinct[i]) for i in chunk],
                encoding=pb.VECTOR_ENCODING_PACKED_F32LE,
            )

    sampler = threading.Thread(target=sample, daemon=True)
    rss_before = psutil.Process(gateway.pid).memory_info().rss
    try:
        sampler.start()
        with stub(port) as s:
            responses = list(s.EmbedStream(requests(), timeout=600))
        rss_after = psutil.Process(gateway.pid).memory_info().rss
    finally:
        done.set()
        sampler.join()
        gateway.stop()
    assert [resp.request_id for resp in responses] == [f"req-{k}" for k in range(len(sizes))]
    pos = 0
    worst = 0.0
    for resp, size in zip(responses, sizes, strict=True):
        assert len(resp.embeddings) == size
        got = np.stack([np.frombuffer(e.packed, dtype="<f4") for e in resp.embeddings])
        worst = max(worst, float(np.abs(got - ref[order[pos : pos + size]]).max()))
        pos += size
    assert pos == 10_000
    assert worst <= 1e-4
    # In flight: at most WINDOW. An answered entry leaves the stream in the same script that
    # stores its answer, so the stream never holds more than the window.
    assert 0 < peak["inputs"] <= WINDOW
    assert rss_after - rss_before < 64 * 2**20, f"gateway grew {(rss_after - rss_before) / 2**20:.0f} MiB"


def test_client_leaving_drops_queued_work(service: Service, r: redis.Redis) -> None:
    long_texts = texts(1500, seed=3, min_words=200, max_words=220)

    def requests() -> Iterator[pb.EmbedRequest]:
        for k in range(0, len(long_texts), 4):
            yield pb.EmbedRequest(request_id=str(k), inputs=[pb.Input(text=t) for t in long_texts[k : k + 4]])

    with stub(service.port) as s:
        call = s.EmbedStream(requests(), timeout=600)
        next(call)
        assert queued_inputs(r, "all-MiniLM-L6-v2") > 100
        call.cancel()
        with pytest.raises(grpc.RpcError) as err:
            next(call)
        assert err.value.code() == grpc.StatusCode.CANCELLED
        deadline = time.monotonic() + 5
        while queued_inputs(r, "all-MiniLM-L6-v2") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert queued_inputs(r, "all-MiniLM-L6-v2") == 0
        # ~1000 texts of 256 tokens would keep one CPU thread busy for well over
        # a minute; an answer now shows the worker dropped what it had read too.
        resp = s.Embed(pb.EmbedRequest(inputs=[pb.Input(text="after the cancel")]), timeout=20)
    assert len(resp.embeddings) == 1


def test_stream_error_names_the_request_after_earlier_answers(service: Service) -> None:
    def requests() -> Iterator[pb.EmbedRequest]:
        yield pb.EmbedRequest(request_id="good", model="debug", inputs=[pb.Input(text="fine")])
        yield pb.EmbedRequest(request_id="bad", model="debug", inputs=[pb.Input(text="")])

    with stub(service.port) as s:
        call = s.EmbedStream(requests(), timeout=30)
        first = next(call)
        assert first.request_id == "good"
        with pytest.raises(grpc.RpcError) as err:
            next(call)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs[0].text" in err.value.details()
