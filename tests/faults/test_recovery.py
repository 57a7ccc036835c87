"""Failures with real processes: kill -9 of a worker, Redis down or paused, dead letters."""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis

from embedstream import keys, replywire, wire
from embedstream.redis_server import RedisServer
from embedstream.v1 import embedder_pb2 as pb
from tests.conftest import Service
from tests.support.corpora import texts
from tests.support.faults import consumer_pending
from tests.support.processes import answers, base_env, start_gateway, start_worker, stub, wait_until


def test_two_workers_share_work_and_kill9_loses_nothing(
    service: Service, r: redis.Redis, reference: object, log_dir: Path
) -> None:
    env = dict(service.env, EMBEDSTREAM_VISIBILITY_TIMEOUT_S="2", EMBEDSTREAM_HEARTBEAT_S="0.3")
    victim = start_worker(env, log_dir, "pair", r)
    survivor = start_worker(env, log_dir, "pair", r)
    distinct = texts(400, seed=5, min_words=10, max_words=40)
    expected = reference.encode(distinct)  # type: ignore[attr-defined]
    per_request = 4
    killed = threading.Event()
    tail = 60  # requests sent after the kill, so the survivor must also take new work
    responses: list[pb.EmbedResponse] = []
    failure: list[BaseException] = []
    sent: list[int] = []

    def chunk(k: int) -> list[str]:
        start = (k * per_request) % len(distinct)
        return distinct[start : start + per_request]

    def requests() -> Iterator[pb.EmbedRequest]:
        # The stream keeps flowing until the victim is killed (however slow or fast this machine is),
        # then sends a fixed tail.
        k = 0
        after = 0
        while after < tail:
            if killed.is_set():
                after += 1
            elif k - len(responses) > 64:
                time.sleep(0.01)  # keep a bounded window in flight while waiting for the kill
                continue
            sent.append(k)
            yield pb.EmbedRequest(model="pair", request_id=str(k), inputs=[pb.Input(text=t) for t in chunk(k)])
            k += 1

    def consume() -> None:
        try:
            with stub(service.port) as s:
                for resp in s.EmbedStream(requests(), timeout=300):
                    responses.append(resp)
        except BaseException as exc:
            failure.append(exc)

    client = threading.Thread(target=consume)
    client.start()
    victim_tag = f"-{victim.pid}-"
    try:
        wait_until(
            lambda: (
                sum(victim_tag in x.metadata.worker for x in responses) >= 5
                and consumer_pending(r, victim.pid, "pair") > 0
            ),
            timeout=120,
            what="the victim to answer some requests and hold more",
        )
        held = consumer_pending(r, victim.pid, "pair")
        victim.signal(signal.SIGKILL)
        killed.set()
        client.join(300)
    finally:
        killed.set()
        victim.kill()
        survivor.stop()
    assert not failure, failure
    assert held > 0
    assert [x.request_id for x in responses] == [str(k) for k in sent]
    workers = {x.metadata.worker for x in responses}
    assert any(victim_tag in w for w in workers) and any(f"-{survivor.pid}-" in w for w in workers)
    for x in responses:
        want = expected[[(int(x.request_id) * per_request + i) % len(distinct) for i in range(per_request)]]
        got = np.array([list(e.values) for e in x.embeddings], dtype=np.float32)
        assert np.abs(got - want).max() <= 1e-4, x.request_id
    assert "reclaimed" in survivor.log()
    assert r.xpending(keys.queue("pair"), keys.GROUP)["pending"] == 0


def _expect_unavailable_fast(port: int) -> None:
    started = time.monotonic()
    with stub(port) as s, pytest.raises(grpc.RpcError) as err:
        s.Embed(pb.EmbedRequest(model="debug", inputs=[pb.Input(text="x")]), timeout=30)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 2.0


def test_redis_paused_or_killed_gives_unavailable_and_recovers(
    tmp_path: Path, registry_file: Path, log_dir: Path
) -> None:
    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    env = base_env(server.url, registry_file, EMBEDSTREAM_REDIS_TIMEOUT_S="1")
    client = redis.Redis.from_url(server.url)
    gateway, port = start_gateway(env, log_dir)
    worker = start_worker(env, log_dir, "debug", client)
    try:
        wait_until(lambda: answers(port, "debug"), 10, what="first answer")
        assert server.proc is not None
        # A silent blackhole: the server holds connections but answers nothing.
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            _expect_unavailable_fast(port)
            _expect_unavailable_fast(port)
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        wait_until(lambda: answers(port, "debug"), 15, what="recovery after pause")
        # Killed outright, then back on the same port with empty memory.
        server.proc.kill()
        server.proc.wait()
        _expect_unavailable_fast(port)

        def nothing_serving() -> bool:
            with stub(port) as s:
                return not any(m.serving for m in s.ListModels(pb.ListModelsRequest(), timeout=5).models)

        wait_until(nothing_serving, 2, what="ListModels to show no model serving")
        server = RedisServer(tmp_path / "redis", port=server.port, appendonly=False).start()
        wait_until(lambda: answers(port, "debug"), 20, what="recovery after restart")
        assert gateway.alive() and worker.alive()
    finally:
        gateway.stop()
        worker.stop()
        server.stop()


def test_forged_pickle_entry_is_dead_lettered_not_executed(service: Service, r: redis.Redis, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    before = r.xlen(keys.dead_letters("debug"))
    r.xadd(keys.queue("debug"), {keys.PAYLOAD: pickle.dumps(Exploit())})
    wait_until(lambda: r.xlen(keys.dead_letters("debug")) > before, 10, what="dead letter")
    last = r.xrevrange(keys.dead_letters("debug"), count=1)[0][1]
    assert b"undecodable" in last[b"reason"]
    assert not marker.exists()
    assert service.workers["debug"].alive()
    with stub(service.port) as s:
        assert s.Embed(pb.EmbedRequest(model="debug", inputs=[pb.Input(text="still fine")]), timeout=5).embeddings


def test_entry_delivered_too_often_is_dead_lettered_and_its_caller_told(
    service: Service, r: redis.Redis, log_dir: Path
) -> None:
    queue, reply_stream = keys.queue("orphan"), keys.replies("test-dead-letter")
    r.delete(queue, reply_stream)
    r.xgroup_create(queue, keys.GROUP, id="0", mkstream=True)
    r.xadd(reply_stream, {"init": "1"})
    deadline = int(time.time() * 1000) + 60_000

    def job(job_id: str) -> bytes:
        return wire.encode_job(wire.Job(job_id, reply_stream, deadline, int(time.time() * 1000), ["some text"]))

    poison = r.xadd(queue, {keys.PAYLOAD: job("poison")})
    healthy = r.xadd(queue, {keys.PAYLOAD: job("healthy")})
    # A consumer that takes both and dies: the real Redis state a crashed worker leaves.
    r.xreadgroup(keys.GROUP, "ghost", {queue: ">"})
    # The poison entry has already been delivered (and killed a worker) 3 times.
    r.xclaim(queue, keys.GROUP, "ghost", 0, [poison], idle=60_000, retrycount=3)
    r.xclaim(queue, keys.GROUP, "ghost", 0, [healthy], idle=60_000, retrycount=1)
    env = dict(service.env, EMBEDSTREAM_VISIBILITY_TIMEOUT_S="1", EMBEDSTREAM_MAX_DELIVERIES="3")
    worker = start_worker(env, log_dir, "orphan", r)
    try:
        wait_until(lambda: r.xlen(reply_stream) >= 3, 15, what="both replies")
    finally:
        worker.stop()
    replies = {}
    for _, fields in r.xrange(reply_stream):
        if keys.PAYLOAD.encode() in fields:
            reply = replywire.decode_reply(fields[keys.PAYLOAD.encode()])
            replies[reply.id] = reply
    assert replies["healthy"].ok and replies["healthy"].count == 1
    assert replies["poison"].error_code == "INTERNAL"
    assert "dead-lettered" in replies["poison"].error_message
    dead = r.xrange(keys.dead_letters("orphan"))
    assert len(dead) == 1 and dead[0][1][b"id"] == poison and b"delivered 4 times" in dead[0][1][b"reason"]
    assert r.xpending(queue, keys.GROUP)["pending"] == 0
    r.delete(queue, reply_stream, keys.dead_letters("orphan"), keys.workers("orphan"), keys.model_info("orphan"))


def test_poison_input_fails_alone_and_is_dead_lettered(service: Service, r: redis.Redis) -> None:
    from embedstream.workers.debug import DEBUG_RAISE

    before = r.xlen(keys.dead_letters("slow"))
    with stub(service.port) as s:
        # "slow" runs one input per batch after 300 ms: queue several so they batch together.
        good = [
            s.Embed.future(pb.EmbedRequest(model="debug", inputs=[pb.Input(text=f"ok {i}")]), timeout=30)
            for i in range(3)
        ]
        mixed = s.Embed.future(
            pb.EmbedRequest(model="debug", inputs=[pb.Input(text="fine"), pb.Input(text=f"x {DEBUG_RAISE}")]),
            timeout=30,
        )
        with pytest.raises(grpc.RpcError) as err:
            mixed.result()
        assert all(len(f.result().embeddings) == 1 for f in good)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "dead-lettered" in err.value.details()
    assert r.xlen(keys.dead_letters("debug")) >= 1
    assert r.xlen(keys.dead_letters("slow")) == before
    assert service.workers["debug"].alive()


def test_a_slow_healthy_batch_is_not_stolen(service: Service, r: redis.Redis, log_dir: Path) -> None:
    # Each batch takes 2.5 s, far past the 1 s visibility timeout: only lease
    # renewal keeps the other worker from reclaiming (and redoing) the work.
    env = dict(service.env, EMBEDSTREAM_VISIBILITY_TIMEOUT_S="1", EMBEDSTREAM_HEARTBEAT_S="0.2")
    first = start_worker(env, log_dir, "lease", r)
    second = start_worker(env, log_dir, "lease", r)
    try:
        with stub(service.port) as s:
            calls = [
                s.Embed.future(
                    pb.EmbedRequest(model="lease", request_id=str(i), inputs=[pb.Input(text=f"t{i}")]), timeout=60
                )
                for i in range(4)
            ]
            answers = [c.result() for c in calls]
    finally:
        first.stop()
        second.stop()
    assert [a.request_id for a in answers] == ["0", "1", "2", "3"]
    assert "reclaimed" not in first.log() and "reclaimed" not in second.log()
    assert r.xpending(keys.queue("lease"), keys.GROUP)["pending"] == 0


def test_idle_consumers_of_dead_workers_are_forgotten(service: Service, r: redis.Redis, log_dir: Path) -> None:
    queue = keys.queue("orphan")
    r.delete(queue)
    r.xgroup_create(queue, keys.GROUP, id="0", mkstream=True)
    r.xgroup_createconsumer(queue, keys.GROUP, "gone-worker")  # a consumer with nothing pending
    assert {c["name"] for c in r.xinfo_consumers(queue, keys.GROUP)} == {b"gone-worker"}
    env = dict(service.env, EMBEDSTREAM_VISIBILITY_TIMEOUT_S="1", EMBEDSTREAM_CONSUMER_GC_S="0.5")
    worker = start_worker(env, log_dir, "orphan", r)
    try:
        wait_until(
            lambda: "gone-worker" not in {c["name"].decode() for c in r.xinfo_consumers(queue, keys.GROUP)},
            10,
            what="the idle consumer to be removed",
        )
        assert "forgot idle consumer gone-worker" in worker.log()
    finally:
        worker.stop()
    r.delete(queue, keys.workers("orphan"), keys.model_info("orphan"), keys.bulk("orphan"))
