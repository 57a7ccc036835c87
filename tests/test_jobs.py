"""Async jobs: submit or upload, watch, read results in order, cancel, expire, survive restarts."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis

from embedstream import keys
from embedstream.redis_server import RedisServer
from embedstream.v1 import embedder_pb2 as epb
from embedstream.v1 import jobs_pb2 as pb
from embedstream.v1 import jobs_pb2_grpc as pb_grpc
from embedstream.workers.debug import debug_vectors
from tests.conftest import Service
from tests.support.processes import base_env, start_gateway, start_worker, wait_until


def jobs(port: int) -> tuple[grpc.Channel, pb_grpc.JobsStub]:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return channel, pb_grpc.JobsStub(channel)


def inputs(texts: list[str]) -> list[epb.Input]:
    return [epb.Input(text=t) for t in texts]


def wait_done(stub: pb_grpc.JobsStub, job_id: str, timeout: float = 120) -> pb.Job:
    states = [j.state for j in stub.WatchJob(pb.GetJobRequest(id=job_id), timeout=timeout)]
    assert states[-1] in (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED)
    return stub.GetJob(pb.GetJobRequest(id=job_id), timeout=10)


def results(stub: pb_grpc.JobsStub, job_id: str, offset: int = 0, limit: int = 0) -> list[pb.JobResult]:
    request = pb.GetJobResultsRequest(id=job_id, offset=offset, limit=limit, encoding=epb.VECTOR_ENCODING_PACKED_F32LE)
    return list(stub.GetJobResults(request, timeout=120))


def as_array(rows: list[pb.JobResult]) -> np.ndarray:
    return np.stack([np.frombuffer(r.embedding.packed, dtype="<f4") for r in rows])


def test_submit_watch_and_read_in_order(service: Service) -> None:
    texts = [f"job text {i}" for i in range(1000)]
    channel, stub = jobs(service.port)
    with channel:
        job = stub.SubmitJob(pb.SubmitJobRequest(spec=pb.JobSpec(model="debug"), inputs=inputs(texts)), timeout=30)
        assert job.id and job.inputs_total == 1000 and job.model == "debug"
        done = wait_done(stub, job.id)
        rows = results(stub, job.id)
        tail = results(stub, job.id, offset=500, limit=100)
    assert done.state == pb.JOB_STATE_SUCCEEDED and done.inputs_done == 1000 and done.dimensions == 64
    assert done.finished_at_ms >= done.created_at_ms > 0 and done.expires_at_ms > done.finished_at_ms
    assert [r.index for r in rows] == list(range(1000))
    assert np.abs(as_array(rows) - debug_vectors(texts, 64, [True] * 1000)).max() <= 1e-6
    assert [r.index for r in tail] == list(range(500, 600))


def test_100k_upload_survives_gateway_kill(service: Service, log_dir: Path) -> None:
    texts = [f"corpus line {i} with a few words" for i in range(100_000)]
    gateway, port = start_gateway(service.env, log_dir)

    def upload() -> Iterator[pb.UploadJobRequest]:
        yield pb.UploadJobRequest(header=pb.JobSpec(model="debug"))
        for k in range(0, len(texts), 1000):
            yield pb.UploadJobRequest(chunk=pb.InputChunk(inputs=inputs(texts[k : k + 1000])))

    channel, stub = jobs(port)
    with channel:
        job = stub.UploadJob(upload(), timeout=300)
    assert job.inputs_total == 100_000
    gateway.signal(signal.SIGKILL)
    gateway.kill()
    # Any gateway answers for any job: the record lives in Redis.
    channel, stub = jobs(service.port)
    with channel:
        done = wait_done(stub, job.id, timeout=300)
        rows = results(stub, job.id)
    assert done.state == pb.JOB_STATE_SUCCEEDED and done.inputs_done == 100_000
    assert [r.index for r in rows] == list(range(100_000))
    assert np.abs(as_array(rows) - debug_vectors(texts, 64, [True] * len(texts))).max() <= 1e-6


def test_cancel_stops_work_and_keeps_finished_results(service: Service) -> None:
    texts = [f"to cancel {i}" for i in range(64 * 40)]
    channel, stub = jobs(service.port)
    with channel:
        job = stub.SubmitJob(pb.SubmitJobRequest(spec=pb.JobSpec(model="jobslow"), inputs=inputs(texts)), timeout=30)
        wait_until(lambda: stub.GetJob(pb.GetJobRequest(id=job.id)).inputs_done >= 64, 60, what="progress")
        cancelled = stub.CancelJob(pb.GetJobRequest(id=job.id), timeout=10)
        assert cancelled.state == pb.JOB_STATE_CANCELLED
        time.sleep(1.0)
        settled = stub.GetJob(pb.GetJobRequest(id=job.id)).inputs_done
        time.sleep(2.0)
        later = stub.GetJob(pb.GetJobRequest(id=job.id))
        rows = results(stub, job.id)
    assert later.state == pb.JOB_STATE_CANCELLED
    assert later.inputs_done == settled < len(texts)
    assert [r.index for r in rows] == list(range(len(rows))) and len(rows) >= 64


def test_idempotency_key_gives_one_job(service: Service, r: redis.Redis) -> None:
    before = int(r.xinfo_stream(keys.bulk("debug"))["entries-added"]) if r.exists(keys.bulk("debug")) else 0
    spec = pb.JobSpec(model="debug", idempotency_key="nightly-2026-11-27")
    channel, stub = jobs(service.port)
    with channel:
        first = stub.SubmitJob(pb.SubmitJobRequest(spec=spec, inputs=inputs(["a", "b"])), timeout=10)
        second = stub.SubmitJob(pb.SubmitJobRequest(spec=spec, inputs=inputs(["a", "b"])), timeout=10)
    assert first.id == second.id
    assert int(r.xinfo_stream(keys.bulk("debug"))["entries-added"]) == before + 1


def test_expired_job_leaves_no_keys(service: Service, r: redis.Redis) -> None:
    spec = pb.JobSpec(model="debug", ttl_seconds=1, idempotency_key="short-lived")
    channel, stub = jobs(service.port)
    with channel:
        job = stub.SubmitJob(pb.SubmitJobRequest(spec=spec, inputs=inputs(["x"] * 100)), timeout=10)
        wait_done(stub, job.id)
        wait_until(lambda: not list(r.scan_iter(match=f"*{job.id}*")), 5, what="job keys to expire")
        assert not r.exists(keys.idempotency("default", "short-lived"))
        with pytest.raises(grpc.RpcError) as err:
            stub.GetJob(pb.GetJobRequest(id=job.id), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_an_idempotency_key_expires_with_its_job_never_after(service: Service, r: redis.Redis) -> None:
    # One script writes both with one absolute expiry: a key that outlived its job by even a
    # moment would be a key left behind (and, before, a retry told NOT_FOUND).
    spec = pb.JobSpec(model="debug", ttl_seconds=60, idempotency_key="expires-together")
    channel, stub = jobs(service.port)
    with channel:
        job = stub.SubmitJob(pb.SubmitJobRequest(spec=spec, inputs=inputs(["x"] * 3)), timeout=10)
    key_expires = r.execute_command("PEXPIRETIME", keys.idempotency("default", "expires-together"))
    job_expires = r.execute_command("PEXPIRETIME", keys.job_meta(job.id))
    assert key_expires == job_expires == job.expires_at_ms


@pytest.mark.parametrize(
    ("request_", "code", "field"),
    [
        (pb.SubmitJobRequest(spec=pb.JobSpec(model="debug")), grpc.StatusCode.INVALID_ARGUMENT, "inputs"),
        (pb.SubmitJobRequest(spec=pb.JobSpec(model="nope"), inputs=inputs(["x"])), grpc.StatusCode.NOT_FOUND, "nope"),
        (
            pb.SubmitJobRequest(spec=pb.JobSpec(model="debug"), inputs=inputs(["ok", ""])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "inputs[1].text",
        ),
        (
            pb.SubmitJobRequest(spec=pb.JobSpec(model="debug", ttl_seconds=10**8), inputs=inputs(["x"])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec.ttl_seconds",
        ),
    ],
)
def test_bad_jobs_are_refused(
    service: Service, request_: pb.SubmitJobRequest, code: grpc.StatusCode, field: str
) -> None:
    channel, stub = jobs(service.port)
    with channel, pytest.raises(grpc.RpcError) as err:
        stub.SubmitJob(request_, timeout=10)
    assert err.value.code() == code and field in err.value.details()


def test_unknown_job_is_not_found(service: Service) -> None:
    channel, stub = jobs(service.port)
    with channel:
        for call in (stub.GetJob, stub.CancelJob):
            with pytest.raises(grpc.RpcError) as err:
                call(pb.GetJobRequest(id="no-such-job"), timeout=5)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_accepted_job_survives_a_redis_restart(tmp_path: Path, registry_file: Path, log_dir: Path) -> None:
    server = RedisServer(tmp_path / "aof", appendonly=True).start()
    env = base_env(server.url, registry_file)
    client = redis.Redis.from_url(server.url)
    gateway, port = start_gateway(env, log_dir)
    worker = None
    try:
        channel, stub = jobs(port)
        with channel:
            job = stub.SubmitJob(pb.SubmitJobRequest(spec=pb.JobSpec(model="orphan"), inputs=inputs(["kept"] * 10)))
        time.sleep(1.2)  # appendfsync everysec: an accepted write is on disk within a second
        server.kill()
        server = RedisServer(tmp_path / "aof", port=server.port, appendonly=True).start()
        worker = start_worker(env, log_dir, "orphan", client)
        channel, stub = jobs(port)
        with channel:
            wait_until(lambda: _ok(stub, job.id), 20, what="the gateway to reach the restarted Redis")
            done = wait_done(stub, job.id, timeout=60)
        assert done.state == pb.JOB_STATE_SUCCEEDED and done.inputs_done == 10
    finally:
        gateway.stop()
        if worker is not None:
            worker.stop()
        server.stop()
        client.close()


def _ok(stub: pb_grpc.JobsStub, job_id: str) -> bool:
    try:
        stub.GetJob(pb.GetJobRequest(id=job_id), timeout=2)
        return True
    except grpc.RpcError:
        return False
