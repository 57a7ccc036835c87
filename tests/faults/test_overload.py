"""Too much, too bad or too impatient: producers at five times capacity, clients that cancel or set
short deadlines on a backlog, poison inputs mixed into batches.

Every scenario asserts lost = duplicated = mixed_up = non_finite = 0, nothing left pending and no
key left behind forever (see tests/support/faults.py score), and prints its scorecard line.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from embedstream import keys
from embedstream.client import retry_after
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc
from embedstream.workers.debug import DEBUG_EXIT, DEBUG_HANG, DEBUG_NAN, DEBUG_RAISE
from tests.support.faults import Cluster, Ledger, metrics_port, score
from tests.support.processes import entries_added, scrape, stub, wait_until


def test_producers_at_five_times_capacity(cluster: Cluster) -> None:
    _, port = cluster.gateway()
    cluster.worker("backlog")  # 4 inputs per 100 ms batch: 40 inputs/s
    capacity = 40.0
    ledger = Ledger()
    rejections: list[float] = []
    hints: list[float] = []
    depth: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            depth.append(int(cluster.r.xlen(keys.queue("backlog"))))
            time.sleep(0.05)

    def call(k: int) -> None:
        rid = f"over-{k}"
        request = ledger.send(rid, [rid])
        request.model = "backlog"
        started = time.monotonic()
        try:
            with stub(port) as s:
                ledger.answer(rid, s.Embed(request, timeout=30))
        except grpc.RpcError as exc:
            ledger.answer(rid, exc.code())
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                rejections.append(time.monotonic() - started)
                hints.append(retry_after(exc))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    seconds, rate = 4.0, 5 * capacity
    with ThreadPoolExecutor(64) as pool:
        begin = time.monotonic()
        for k in range(int(seconds * rate)):
            time.sleep(max(0.0, begin + k / rate - time.monotonic()))
            pool.submit(call, k)
    stop.set()
    sampler.join()
    accepted = sum(isinstance(a[0], pb.EmbedResponse) for a in ledger.answers.values())
    assert rejections and accepted >= capacity * seconds * 0.5
    assert max(depth) <= 16  # the model's max_queue_entries
    assert min(hints) >= 0.02  # every rejection carries a retry hint (trailing retry-after-ms)
    rejections.sort()
    score(
        "producers at 5x capacity",
        cluster,
        ledger.counts(allowed=(grpc.StatusCode.RESOURCE_EXHAUSTED,)),
        0.0,
        accepted=accepted,
        rejected=len(rejections),
        rejection_p99_ms=round(1000 * rejections[int(0.99 * (len(rejections) - 1))], 1),
        max_queue_depth=max(depth),
    )


def test_clients_cancelling_mid_stream_and_short_deadlines_on_a_backlog(cluster: Cluster) -> None:
    _, port = cluster.gateway()
    worker_metrics = metrics_port()
    cluster.worker("deep", EMBEDSTREAM_METRICS_PORT=str(worker_metrics))
    ledger = Ledger()

    # Two streams that leave mid-way, and one that stays: the one that stays is whole.
    leavers = []
    for n in range(2):
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        requests = (
            pb.EmbedRequest(model="deep", request_id=str(k), inputs=[pb.Input(text=f"gone {n} {k}")])
            for k in range(100)
        )
        call = embedder_pb2_grpc.EmbedderStub(channel).EmbedStream(requests, timeout=60)
        leavers.append((channel, call))
    stayer = [ledger.send(f"stay-{k}", [f"stay {k}"]) for k in range(80)]
    for request in stayer:
        request.model = "deep"
    answers: list[pb.EmbedResponse] = []
    done = threading.Thread(
        target=lambda: answers.extend(stub_stream(port, stayer)),
        daemon=True,
    )
    done.start()
    for channel, call in leavers:
        next(call)  # it got going ...
        call.cancel()  # ... and the client left
        channel.close()

    # Short deadlines against that backlog: each ends in time, and its work never runs.
    overdue = []
    for k in range(10):
        started = time.monotonic()
        rid = f"short-{k}"
        request = ledger.send(rid, [rid])
        request.model = "deep"
        try:
            with stub(port) as s:
                ledger.answer(rid, s.Embed(request, timeout=0.3))
        except grpc.RpcError as exc:
            ledger.answer(rid, exc.code())
        overdue.append(time.monotonic() - started)
    done.join(120)
    for resp in answers:
        ledger.answer(resp.request_id, resp)
    assert len(answers) == len(stayer)
    assert max(overdue) < 0.3 + 0.5
    wait_until(lambda: cluster.pending() == 0 and cluster.r.xlen(keys.queue("deep")) == 0, 30, what="drain")
    metrics = scrape(worker_metrics)
    ran = metrics['embedstream_batch_inputs_sum{model="deep"}']
    answered_ok = sum(isinstance(a[0], pb.EmbedResponse) for a in ledger.answers.values())
    # Inputs the model ran: the stayer's, the short calls that made it, and what the
    # leavers were answered before they left (a few batches); most of the 200 they
    # abandoned never reached the model, nor did any short call's expired work.
    assert ran <= answered_ok + 50, (ran, answered_ok)
    dropped = sum(v for k, v in metrics.items() if k.startswith("embedstream_worker_dropped_total"))
    score(
        "clients cancelling mid-stream, short deadlines on a backlog",
        cluster,
        ledger.counts(allowed=(grpc.StatusCode.DEADLINE_EXCEEDED,)),
        0.0,
        model_ran_inputs=int(ran),
        answered=answered_ok,
        dropped_before_model=int(dropped),
        slowest_short_call_ms=round(1000 * max(overdue)),
        statuses=ledger.statuses(),
    )


def test_a_call_overtakes_a_stream_window_queued_ahead_of_it(cluster: Cluster) -> None:
    # A stream keeps 120 requests (480 inputs, ~12 s of "deep" batches) in Redis. A unary call
    # made behind them goes on the model's call stream, is read at once and runs next: it is
    # answered while most of the stream still waits, however slow the machine.
    _, port = cluster.gateway()
    cluster.worker("deep")
    ledger = Ledger()
    streamed = [ledger.send(f"win-{k}", [f"window {k} {j}" for j in range(4)]) for k in range(120)]
    for request in streamed:
        request.model = "deep"
    received: list[pb.EmbedResponse] = []
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    responses = embedder_pb2_grpc.EmbedderStub(channel).EmbedStream(iter(streamed), timeout=120)

    def read() -> None:
        try:
            received.extend(responses)
        except grpc.RpcError as exc:  # the cancel below
            assert exc.code() == grpc.StatusCode.CANCELLED, exc

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_until(lambda: len(received) >= 1, 30, what="the stream's first answer")
    # The window is in Redis, on the stream lane, before the call is made.
    wait_until(lambda: entries_added(cluster.r, "deep", keys.streams) >= 100, 30, what="the window queued")
    calls_before = entries_added(cluster.r, "deep", keys.queue)
    call = ledger.send("overtaker", ["overtaker"])
    call.model = "deep"
    with stub(port) as s:
        ledger.answer("overtaker", s.Embed(call, timeout=60))
    answered_before_call = len(received)
    assert entries_added(cluster.r, "deep", keys.queue) == calls_before + 1, "the call went on the call stream"
    assert answered_before_call < 60, f"the call waited for {answered_before_call} of the stream's 120 requests"
    responses.cancel()  # the client leaves: the rest of the window is withdrawn
    reader.join(30)
    channel.close()
    for response in received:
        ledger.answer(response.request_id, response)
    for request in streamed[len(received) :]:
        ledger.answer(request.request_id, grpc.StatusCode.CANCELLED)
    wait_until(lambda: all(cluster.r.xlen(lane) == 0 for lane in keys.lanes("deep")), 30, what="the lanes to empty")
    score(
        "a call behind a stream's window",
        cluster,
        ledger.counts(allowed=(grpc.StatusCode.CANCELLED,)),
        0.0,
        stream_answers_before_the_call=answered_before_call,
    )


def stub_stream(port: int, requests: list[pb.EmbedRequest]) -> list[pb.EmbedResponse]:
    with stub(port) as s:
        return list(s.EmbedStream(iter(requests), timeout=120))


POISONS = {"raise": DEBUG_RAISE, "exit": DEBUG_EXIT, "nan": DEBUG_NAN, "hang": DEBUG_HANG}


@pytest.mark.parametrize("kind", list(POISONS))
def test_poison_inputs_mixed_into_batches(cluster: Cluster, kind: str) -> None:
    # Workers killed by the poison come back within the liveness window, as under a
    # supervisor, so the gateway keeps waiting calls instead of failing them.
    cluster.env["EMBEDSTREAM_WORKER_LIVENESS_S"] = "10"
    _, port = cluster.gateway()
    cluster.worker()
    cluster.worker()
    cluster.restart_workers = True
    ledger = Ledger()
    poisoned = {7, 23}
    requests = []
    for k in range(40):
        rid = f"{kind}-{k}"
        texts = [f"{rid} fine", f"{rid} {POISONS[kind]}" if k in poisoned else f"{rid} also fine"]
        requests.append(ledger.send(rid, texts))
        if k in poisoned:
            ledger.doomed[rid] = grpc.StatusCode.INTERNAL
    messages: dict[str, str] = {}

    def call(request: pb.EmbedRequest) -> None:
        try:
            with stub(port) as s:
                ledger.answer(request.request_id, s.Embed(request, timeout=60))
        except grpc.RpcError as exc:
            ledger.answer(request.request_id, exc.code())
            messages[request.request_id] = exc.details() or ""

    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(call, requests))
    took = time.monotonic() - started
    dead = cluster.dead_letters()
    assert len(dead) == len(poisoned)
    for k in poisoned:
        assert "dead-lettered" in messages[f"{kind}-{k}"]
    reasons = sorted(d[b"reason"].decode() for d in dead)
    if kind in ("exit", "hang"):
        # Each poison entry was run at most max_deliveries (2) times, killing a worker each time.
        assert cluster.deaths >= len(poisoned) and all("delivered 3 times" in r for r in reasons), reasons
    score(
        f"poison input ({kind}) mixed into batches",
        cluster,
        ledger.counts(),
        took,
        dead_lettered=len(dead),
        worker_deaths=cluster.deaths,
    )
