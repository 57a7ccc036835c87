"""Processes that die or stall mid-work: a worker killed, or stopped past its visibility timeout;
a gateway killed with jobs and a stream in flight; Redis paused, then killed and restarted from its AOF.

Every scenario asserts lost = duplicated = mixed_up = non_finite = 0, nothing left pending and no
key left behind forever (see tests/support/faults.py score), and prints its scorecard line.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import grpc
import numpy as np
import pytest

from embedstream.client import Client, Retry
from tests.support.faultloads import StreamLoad, corpus, embed_one, serving, strike_while_holding
from tests.support.faults import Cluster, Ledger, expected, metrics_port, score
from tests.support.processes import answers, scrape, wait_until


def test_worker_kill9_mid_batch(cluster: Cluster) -> None:
    _, port = cluster.gateway()
    victim, survivor = cluster.worker(), cluster.worker()
    ledger = Ledger()
    load = StreamLoad(port, ledger, "k9")
    held, recovery = strike_while_holding(cluster, load, victim, signal.SIGKILL)
    load.finish()
    assert held > 0 and load.answered_by(survivor.pid) > 0
    # The declared bound: the visibility timeout plus one reclaim scan (a quarter of it), with
    # a second of slack for this 2-core machine's scheduling.
    assert recovery < 1.25 * 1.5 + 1.0
    score("worker kill -9 mid-batch", cluster, ledger.counts(), recovery, held=held, requests=len(ledger.sent))


def test_worker_sigstop_past_the_visibility_timeout_then_resumed(cluster: Cluster) -> None:
    _, port = cluster.gateway(EMBEDSTREAM_METRICS_PORT=str(gw_metrics := metrics_port()))
    paused, other = cluster.worker(), cluster.worker()
    ledger = Ledger()
    load = StreamLoad(port, ledger, "stop")
    held, recovery = strike_while_holding(cluster, load, paused, signal.SIGSTOP)
    time.sleep(1.5)  # well past the 1.5 s visibility timeout
    paused.signal(signal.SIGCONT)
    load.finish()
    assert paused.alive() and load.answered_by(other.pid) > 0
    late = scrape(gw_metrics).get("embedstream_late_replies_total", 0.0)
    # What the resumed worker had finished was either dropped by it (lease lost) or by the gateway.
    assert "lost the lease" in paused.log() or late > 0
    score(
        "worker SIGSTOP past visibility, SIGCONT",
        cluster,
        ledger.counts(),
        recovery,
        held=held,
        late_replies_dropped=int(late),
    )


def test_gateway_kill9_with_jobs_and_streams_in_flight(cluster: Cluster) -> None:
    victim, port = cluster.gateway()
    _, other_port = cluster.gateway()
    cluster.worker()
    cluster.worker()
    jobs_texts = [corpus(1500, "jobA"), corpus(1500, "jobB")]
    stream_texts = corpus(3000, "stream")
    got: list[np.ndarray] = []
    failure: list[BaseException] = []
    with Client(f"127.0.0.1:{port}", model="fault") as client:
        handles = [client.upload_job(texts, model="fault") for texts in jobs_texts]

        def consume() -> None:
            try:
                # Patient enough to outlast the gateway's restart.
                patient = Retry(attempts=40, initial_s=0.1, max_s=1.0)
                with Client(f"127.0.0.1:{port}", model="fault", timeout=60, retry=patient) as streamer:
                    got.extend(streamer.embed_stream(stream_texts, batch_size=16, window=256))
            except BaseException as exc:
                failure.append(exc)

        reader = threading.Thread(target=consume)
        reader.start()
        wait_until(lambda: len(got) >= 20, 30, what="the stream to get going")
        victim.signal(signal.SIGKILL)
        killed = time.monotonic()
        answered = len(got)
        cluster.gateway(port=port)  # an orchestrator restarts it on the same address
        wait_until(lambda: len(got) > answered or not reader.is_alive(), 60, what="the stream to resume")
        recovery = time.monotonic() - killed
        reader.join(120)
    assert not failure, failure
    rows = np.concatenate(got) if got else np.zeros((0, 16), np.float32)
    counts = {"lost": max(0, len(stream_texts) - len(rows)), "duplicated": max(0, len(rows) - len(stream_texts))}
    counts["mixed_up"] = int(len(rows) == len(stream_texts) and np.abs(rows - expected(stream_texts)).max() > 1e-5)
    counts["non_finite"] = int(not np.isfinite(rows).all())
    with Client(f"127.0.0.1:{other_port}", model="fault") as client:
        for handle, texts in zip(handles, jobs_texts):
            job = client.job(handle.id).wait(timeout=120)
            assert job.inputs_done == len(texts) and job.inputs_failed == 0
            vecs = np.stack([v for _, v in client.job(handle.id).results()])
            counts["lost"] += len(texts) - len(vecs)
            counts["mixed_up"] += int(np.abs(vecs - expected(texts)).max() > 1e-5)
    score("gateway kill -9 with jobs and a stream in flight", cluster, counts, recovery, jobs=len(handles))


def _unavailable_within(port: int, limit: float) -> float:
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        embed_one(port, "during the outage", timeout=30)
    took = time.monotonic() - started
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
    assert took < limit
    return took


def test_redis_paused_then_killed_and_restarted_with_aof(cluster: Cluster) -> None:
    _, port = cluster.gateway()
    cluster.worker()
    texts = corpus(3000, "aof")
    with Client(f"127.0.0.1:{port}", model="fault") as client:
        handle = client.upload_job(texts, model="fault")
        wait_until(lambda: handle.refresh().inputs_done > 0, 30, what="the job to start")
        server = cluster.redis_server
        assert server.proc is not None

        # A silent blackhole: connections stay open, nothing answers.
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            pause_took = max(_unavailable_within(port, 2.0) for _ in range(3))
            wait_until(lambda: not serving(port), 5, what="health NOT_SERVING while Redis is paused")
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        resumed = time.monotonic()
        wait_until(lambda: answers(port, "fault", "are you back?", timeout=3), 20, what="recovery after the pause")
        pause_recovery = time.monotonic() - resumed

        # Killed outright (no shutdown save), then restarted on the same port from its AOF.
        server.kill()
        kill_took = max(_unavailable_within(port, 2.0) for _ in range(3))
        wait_until(lambda: not serving(port), 5, what="health NOT_SERVING while Redis is down")
        server.start()
        restarted = time.monotonic()
        wait_until(lambda: answers(port, "fault", "are you back?", timeout=3), 30, what="recovery after the restart")
        restart_recovery = time.monotonic() - restarted
        assert serving(port)

        job = handle.wait(timeout=120)
        vecs = np.stack([v for _, v in handle.results()])
    counts = {
        "lost": len(texts) - len(vecs) + job.inputs_failed,
        "duplicated": max(0, job.inputs_done - len(texts)),
        "mixed_up": int(np.abs(vecs - expected(texts)).max() > 1e-5),
        "non_finite": int(not np.isfinite(vecs).all()),
    }
    assert all(proc.alive() for proc, _ in cluster.gateways) and all(p.alive() for _, p in cluster.workers)
    score(
        "redis SIGSTOP (blackhole) + SIGCONT, then kill -9 + restart from AOF, job in flight",
        cluster,
        counts,
        restart_recovery,
        pause_recovery_s=round(pause_recovery, 2),
        unavailable_after_s=round(max(pause_took, kill_took), 2),
    )
