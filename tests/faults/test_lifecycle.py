"""Starting, stopping and limits: rolling restarts, draining gateways, deadlines, dead-letter caps,
scale to zero, concurrency limits, a worker that leaves.

Every scenario asserts lost = duplicated = mixed_up = non_finite = 0, nothing left pending and no
key left behind forever (see tests/support/faults.py score), and prints its scorecard line.
"""

from __future__ import annotations

import signal
import threading
import time

import grpc
import numpy as np
import pytest

from embedstream import keys
from embedstream.client import CHANNEL_OPTIONS
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc
from tests.support.faultloads import embed_one, serving
from tests.support.faults import Cluster, Ledger, consumer_pending, expected, metrics_port, score
from tests.support.processes import scrape, stub, wait_until


def test_sigterm_rolling_restart_under_load(cluster: Cluster) -> None:
    gateways = [cluster.gateway(), cluster.gateway()]
    for _ in range(2):
        cluster.worker()
    target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for _, port in gateways)
    ledger = Ledger()
    errors: list[tuple[grpc.StatusCode, str, float]] = []
    stop = threading.Event()

    def load(n: int) -> None:
        with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
            s = embedder_pb2_grpc.EmbedderStub(channel)
            k = 0
            while not stop.is_set():
                rid = f"roll-{n}-{k}"
                try:
                    ledger.answer(rid, s.Embed(ledger.send(rid, [rid]), timeout=20, wait_for_ready=True))
                except grpc.RpcError as exc:
                    ledger.answer(rid, exc.code())
                    errors.append((exc.code(), exc.details() or "", time.monotonic() - began))
                k += 1

    began = time.monotonic()
    threads = [threading.Thread(target=load, args=(n,), daemon=True) for n in range(4)]
    for t in threads:
        t.start()
    time.sleep(1)
    for proc, port in list(gateways):
        assert proc.stop() == 0
        cluster.gateway(port=port)
        time.sleep(1)  # let clients reconnect before the next one goes
    for proc in cluster.live_workers():
        replacement = cluster.worker()
        assert proc.stop() == 0
        assert "handed back" in proc.log() or "stopped" in proc.log()
        cluster.wait_serving("fault", replacement)
    time.sleep(1)
    stop.set()
    for t in threads:
        t.join(30)
    assert not errors, errors
    score(
        "SIGTERM rolling restart of 2 gateways and 2 workers under load",
        cluster,
        ledger.counts(),
        time.monotonic() - began,
        calls=len(ledger.sent),
        client_errors=len(errors),
    )


def test_gateway_sigterm_reports_not_serving_first_then_drains(cluster: Cluster) -> None:
    gateway, port = cluster.gateway(EMBEDSTREAM_SHUTDOWN_DELAY_S="3")
    cluster.worker("backlog")
    with stub(port) as s:
        slow = s.Embed.future(pb.EmbedRequest(model="backlog", inputs=[pb.Input(text="in flight")]), timeout=20)
        gateway.signal(signal.SIGTERM)
        wait_until(lambda: not serving(port), 2, what="NOT_SERVING right after SIGTERM")
        # Still answering during the delay: clients and load balancers move away first.
        assert embed_one(port, "during the delay", model="backlog").embeddings
        assert slow.result().embeddings  # the call in flight finishes
    assert gateway.proc.wait(30) == 0


def test_clients_leave_a_draining_gateway_while_it_reports_not_serving(cluster: Cluster) -> None:
    metrics = metrics_port()
    draining, first = cluster.gateway(EMBEDSTREAM_SHUTDOWN_DELAY_S="3", EMBEDSTREAM_METRICS_PORT=str(metrics))
    _, second = cluster.gateway()
    cluster.worker()

    def served() -> float:  # calls the draining gateway has answered
        return sum(v for series, v in scrape(metrics).items() if series.startswith("embedstream_requests_total"))

    def call(text: str) -> None:
        assert s.Embed(pb.EmbedRequest(model="fault", inputs=[pb.Input(text=text)]), timeout=10).embeddings

    with grpc.insecure_channel(f"ipv4:127.0.0.1:{first},127.0.0.1:{second}", options=CHANNEL_OPTIONS) as channel:
        s = embedder_pb2_grpc.EmbedderStub(channel)
        wait_until(lambda: call("warm up") or served() > 0, 10, what="round_robin to reach the first gateway")
        draining.signal(signal.SIGTERM)
        wait_until(lambda: not serving(first), 2, what="NOT_SERVING right after SIGTERM")
        time.sleep(0.2)  # the clients' health watch hears it
        before = served()
        for k in range(20):  # all within the 3 s delay, while the gateway would still answer
            call(f"while draining {k}")
        assert served() == before, "a client sent calls to a gateway that reports NOT_SERVING"
    assert draining.proc.wait(30) == 0


def test_calls_without_a_deadline_get_the_servers_maximum(cluster: Cluster) -> None:
    _, port = cluster.gateway(EMBEDSTREAM_MAX_DEADLINE_S="1")
    with stub(port) as s:
        # A scale-to-zero model with no worker: the call is queued and nothing answers it, so only the deadline
        # the server gave it (there is none from the client) can end it.
        started = time.monotonic()
        call = s.Embed.future(pb.EmbedRequest(model="idle", inputs=[pb.Input(text="no deadline")] * 4))
        error = call.exception(timeout=10)  # a call the server left without a deadline fails here, after 10 s
        took = time.monotonic() - started
    assert isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0.8 < took < 6.0  # the server's 1 s, not the 10 s wait above (room for a loaded machine)
    # Expired work leaves the queue before any model sees it: the gateway withdraws the entry it wrote.
    wait_until(lambda: cluster.r.xlen(keys.queue("idle")) == 0, 5, what="the expired entry to be withdrawn")
    assert cluster.pending() == 0


def test_dead_letters_are_capped_and_what_the_cap_trims_is_counted(cluster: Cluster) -> None:
    port = metrics_port()
    cluster.worker("fault", EMBEDSTREAM_MAX_DEAD_LETTERS="2", EMBEDSTREAM_METRICS_PORT=str(port))
    for k in range(5):
        cluster.r.xadd(keys.queue("fault"), {keys.PAYLOAD: b"\x80\x04not msgpack %d" % k})
    wait_until(
        lambda: scrape(port).get('embedstream_dead_lettered_total{model="fault"}', 0) == 5, 15, what="5 dead letters"
    )
    assert cluster.r.xlen(keys.dead_letters("fault")) == 2
    assert scrape(port)['embedstream_dead_letters_trimmed_total{model="fault"}'] == 3
    assert cluster.r.xlen(keys.queue("fault")) == 0 and cluster.pending() == 0


def test_a_scale_to_zero_model_queues_calls_until_a_worker_starts(cluster: Cluster) -> None:
    _, port = cluster.gateway()
    with stub(port) as s:
        texts = ["woken up", "by the queue"]
        call = s.Embed.future(pb.EmbedRequest(model="idle", inputs=[pb.Input(text=t) for t in texts]), timeout=60)
        # Queued, not refused: what an autoscaler watching the stream's length sees.
        wait_until(lambda: cluster.r.xlen(keys.queue("idle")) == 1, 10, what="the call to be queued")
        assert not call.done()
        cluster.worker("idle")  # the autoscaler's new worker
        got = np.array([list(e.values) for e in call.result().embeddings], dtype=np.float32)
    assert np.abs(got - expected(texts)).max() < 1e-6
    with stub(port) as s, pytest.raises(grpc.RpcError) as err:
        s.Embed(pb.EmbedRequest(model="fault", inputs=[pb.Input(text="no worker, not scale-to-zero")]), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_gateway_serves_at_most_max_concurrent_rpcs_at_once(cluster: Cluster) -> None:
    _, port = cluster.gateway(EMBEDSTREAM_MAX_CONCURRENT_RPCS="4")
    cluster.worker("deep")  # 100 ms per batch of 4
    with stub(port) as s:
        calls = [
            s.Embed.future(pb.EmbedRequest(model="deep", inputs=[pb.Input(text=f"c{k}")] * 4), timeout=30)
            for k in range(12)
        ]
        codes = [call.code() for call in calls]  # each waits for its call to end
    # Past the limit gRPC refuses at once, before reading the request: the gateway's memory
    # is bounded by max_concurrent_rpcs x the largest message.
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and codes.count(grpc.StatusCode.OK) >= 4
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}


def test_a_worker_that_leaves_hands_its_entries_back_at_once(cluster: Cluster) -> None:
    # A dead worker's entries would wait 30 s or more; handed back, they run at once. The margin
    # between the two keeps the test honest on a loaded machine (a loaded 2-core machine took over 8 s).
    slow_reclaim = {"EMBEDSTREAM_VISIBILITY_TIMEOUT_S": "30"}
    _, port = cluster.gateway()
    leaving = cluster.worker("deep", **slow_reclaim)  # 100 ms per batch of 4
    texts = [[f"hand back {k} {i}" for i in range(4)] for k in range(40)]
    with stub(port) as s:
        calls = [
            s.Embed.future(pb.EmbedRequest(model="deep", inputs=[pb.Input(text=t) for t in four]), timeout=60)
            for four in texts
        ]
        wait_until(lambda: consumer_pending(cluster.r, leaving.pid, "deep") >= 20, 10, what="the worker to hold work")
        staying = cluster.worker("deep", **slow_reclaim)
        leaving.signal(signal.SIGTERM)
        left = time.monotonic()
        results = [call.result() for call in calls]
        took = time.monotonic() - left
    assert leaving.proc.wait(20) == 0 and "handed back" in leaving.log()
    assert took < 25, f"{took:.1f} s: the entries waited for the visibility timeout instead of being handed back"
    for four, resp in zip(texts, results):
        got = np.array([list(e.values) for e in resp.embeddings], dtype=np.float32)
        assert np.abs(got - expected(four)).max() < 1e-6
    assert staying.alive()
