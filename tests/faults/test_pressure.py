"""Redis under memory pressure and concurrent duplicate jobs: a flood of jobs and calls until Redis
refuses writes, then memory freed; fifty duplicate SubmitJob calls at once.

Every scenario asserts lost = duplicated = mixed_up = non_finite = 0, nothing left pending and no
key left behind forever (see tests/support/faults.py score), and prints its scorecard line.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import redis

from embedstream import keys
from embedstream.client import retry_after
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc, jobs_pb2_grpc
from embedstream.v1 import jobs_pb2 as jpb
from tests.support.faultloads import corpus
from tests.support.faults import Cluster, Ledger, expected, metrics_port, score
from tests.support.processes import scrape, wait_until


def _oom_refusals(r: redis.Redis) -> int:
    """Writes Redis refused for want of memory so far (``INFO errorstats``)."""
    return int(r.info("errorstats").get("errorstat_OOM", {}).get("count", 0))


def _job_request(texts: list[str], model: str = "quick", key: str = "", normalize: bool = True) -> jpb.SubmitJobRequest:
    spec = jpb.JobSpec(model=model, idempotency_key=key, normalize=normalize)
    return jpb.SubmitJobRequest(spec=spec, inputs=[pb.Input(text=t) for t in texts])


def _job_vectors(stub: jobs_pb2_grpc.JobsStub, job_id: str) -> np.ndarray:
    results = stub.GetJobResults(jpb.GetJobResultsRequest(id=job_id), timeout=30)
    return np.array([list(r.embedding.values) for r in results], dtype=np.float32)


def test_redis_full_under_a_flood_of_jobs_and_calls_then_memory_freed(cluster: Cluster) -> None:
    _, port = cluster.gateway()
    worker_metrics = [metrics_port(), metrics_port()]
    workers = [cluster.worker("quick", EMBEDSTREAM_METRICS_PORT=str(p)) for p in worker_metrics]
    r = cluster.r
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", int(r.info("memory")["used_memory"]) + 1_500_000)  # room for a few dozen jobs
    ledger = Ledger()
    accepted: dict[str, list[str]] = {}
    codes: dict[str, int] = defaultdict(int)
    hints: list[float] = []
    odd: list[str] = []  # what a refusal other than RESOURCE_EXHAUSTED said, for the failure message
    stop = threading.Event()

    def refused(exc: grpc.RpcError) -> None:
        codes[exc.code().name] += 1
        if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            hints.append(retry_after(exc))
        else:
            odd.append(f"{exc.code().name}: {exc.details()}")

    def jobs(n: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            s = jobs_pb2_grpc.JobsStub(channel)
            k = 0
            while not stop.is_set():
                texts = [f"full job {n}-{k} input {i} " + "padding " * 25 for i in range(64)]
                k += 1
                try:
                    accepted[s.SubmitJob(_job_request(texts), timeout=30).id] = texts
                except grpc.RpcError as exc:
                    refused(exc)

    def calls(n: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            s = embedder_pb2_grpc.EmbedderStub(channel)
            k = 0
            while not stop.is_set():
                rid = f"full-{n}-{k}"
                k += 1
                request = ledger.send(rid, [f"{rid} a", f"{rid} b"])
                request.model = "quick"
                try:
                    ledger.answer(rid, s.Embed(request, timeout=60))
                except grpc.RpcError as exc:
                    ledger.answer(rid, exc.code())
                    refused(exc)

    threads = [threading.Thread(target=jobs, args=(n,), daemon=True) for n in range(3)]
    threads += [threading.Thread(target=calls, args=(n,), daemon=True) for n in range(3)]
    began = time.monotonic()
    for t in threads:
        t.start()
    # Flood until Redis has been refusing writes for a while (at least 3 s of flood in all).
    wait_until(lambda: _oom_refusals(r) >= 200 and time.monotonic() - began > 3, 60, what="Redis to fill up")
    stop.set()
    refusals = _oom_refusals(r)
    # An operator makes room while calls are still in flight: a call accepted just before Redis
    # filled, whose answer the worker could not store, is answered once the worker reruns it
    # (it waits for memory, up to its deadline; freeing only after every call ended would turn
    # those into DEADLINE_EXCEEDED, as a CI run saw).
    r.config_set("maxmemory", 0)
    freed = time.monotonic()
    wait_until(
        lambda: all(f"-{w.pid}-".encode() in b"".join(r.zrange(keys.workers("quick"), 0, -1)) for w in workers),
        10,
        what="both workers visible",
    )
    visible_s = time.monotonic() - freed
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads)
    counts = ledger.counts(allowed=(grpc.StatusCode.RESOURCE_EXHAUSTED,))
    states: dict[str, int] = defaultdict(int)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        s = jobs_pb2_grpc.JobsStub(channel)
        for job_id, texts in accepted.items():
            job = s.WatchJob(jpb.GetJobRequest(id=job_id), timeout=120)
            last = list(job)[-1]
            states[jpb.JobState.Name(last.state)] += 1
            vecs = _job_vectors(s, job_id)
            counts["lost"] += len(texts) - last.inputs_done + (len(texts) - len(vecs))
            if len(vecs) == len(texts):
                counts["mixed_up"] += int(np.abs(vecs - expected(texts)).max() > 1e-5)
    recovery = time.monotonic() - freed
    # Answers a worker could not store and handed back, unacknowledged, to be run again.
    handed_back = sum(
        scrape(p).get('embedstream_worker_unstored_total{kind="answer",model="quick"}', 0) for p in worker_metrics
    )
    assert refusals > 0 and codes["RESOURCE_EXHAUSTED"] > 0, (refusals, dict(codes))
    assert set(codes) <= {"RESOURCE_EXHAUSTED"}, (dict(codes), odd[:5])  # never INTERNAL, UNKNOWN or UNAVAILABLE
    assert min(hints) >= 1.0  # a refusal for want of memory carries a retry hint
    assert accepted and set(states) == {"JOB_STATE_SUCCEEDED"}, dict(states)
    assert all(w.alive() for w in workers) and cluster.deaths == 0
    score(
        "redis full (maxmemory, noeviction) under a flood of jobs and calls, then memory freed",
        cluster,
        counts,
        recovery,
        oom_refusals=refusals,
        accepted_jobs=len(accepted),
        calls=len(ledger.sent),
        statuses=dict(codes),
        workers_visible_after_s=round(visible_s, 2),
        answers_handed_back=int(handed_back),
    )


def test_fifty_concurrent_duplicate_submit_jobs_from_several_channels(cluster: Cluster) -> None:
    _, port = cluster.gateway()
    _, other_port = cluster.gateway()
    cluster.worker("quick")
    texts = corpus(640, "dup")  # ten chunks, so duplicates arrive while the first is still enqueuing
    request = _job_request(texts, key="retry-on-timeout")
    channels = [grpc.insecure_channel(f"127.0.0.1:{(port, other_port)[n % 2]}") for n in range(5)]
    barrier = threading.Barrier(50)
    ids: list[str] = []
    errors: list[grpc.StatusCode] = []

    def submit(n: int) -> None:
        s = jobs_pb2_grpc.JobsStub(channels[n % len(channels)])
        barrier.wait()
        try:
            ids.append(s.SubmitJob(request, timeout=60).id)
        except grpc.RpcError as exc:
            errors.append(exc.code())

    with ThreadPoolExecutor(50) as pool:
        list(pool.map(submit, range(50)))
    s = jobs_pb2_grpc.JobsStub(channels[0])
    conflicts = []
    other_inputs = _job_request(texts[:-1], key="retry-on-timeout")
    other_options = _job_request(texts, key="retry-on-timeout", normalize=False)
    for other in (other_inputs, other_options):
        with pytest.raises(grpc.RpcError) as err:
            s.SubmitJob(other, timeout=30)
        conflicts.append(err.value)
    job = list(s.WatchJob(jpb.GetJobRequest(id=ids[0]), timeout=120))[-1]
    vecs = _job_vectors(s, ids[0])
    for channel in channels:
        channel.close()
    assert not errors, errors  # no NOT_FOUND, nothing else either
    assert len(set(ids)) == 1 and len(ids) == 50
    for conflict in conflicts:
        assert conflict.code() == grpc.StatusCode.ALREADY_EXISTS and "retry-on-timeout" in (conflict.details() or "")
    assert job.state == jpb.JOB_STATE_SUCCEEDED
    counts = {
        "lost": len(texts) - len(vecs),
        "duplicated": max(0, job.inputs_done - len(texts)),
        "mixed_up": int(len(vecs) == len(texts) and np.abs(vecs - expected(texts)).max() > 1e-5),
        "non_finite": int(not np.isfinite(vecs).all()),
    }
    score(
        "50 concurrent duplicate SubmitJob from 5 channels, then a different payload",
        cluster,
        counts,
        0.0,
        job_ids=len(set(ids)),
        not_found=errors.count(grpc.StatusCode.NOT_FOUND),
        conflicts_already_exists=sum(c.code() == grpc.StatusCode.ALREADY_EXISTS for c in conflicts),
    )
