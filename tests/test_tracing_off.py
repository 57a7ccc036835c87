"""With no OTLP endpoint, tracing costs nothing: no OpenTelemetry import beyond redis-py's
own, no exporter thread, and no trace field in queue entries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import msgpack
import pytest
import redis

from embedstream import keys, wire
from embedstream.redis_server import RedisServer
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import jobs_pb2 as jpb
from embedstream.v1 import jobs_pb2_grpc as jpb_grpc
from tests.support import ROOT
from tests.support.otlp import traceparent
from tests.support.processes import start_gateway
from tests.support.traced import IDLE, plain_env, raw_bulk_entries, write_registry


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_registry(tmp_path_factory)


PROBE = """
import json, sys, threading
import msgpack
from embedstream import logs, tracing, wire
from embedstream.settings import Settings
from embedstream.gateway.dispatch import Options
from embedstream.gateway.server import Gateway, serve
from embedstream.workers.worker import Worker

settings = Settings.from_env()
logs.setup(settings.log_level, settings.log_format, "gateway")
tracing.setup(settings, "gateway")
entry = msgpack.unpackb(wire.encode_job(Options().job("i", "r", 1, ["x"])))
print(json.dumps({
    "enabled": tracing.enabled(),
    "imported": sorted(m for m in sys.modules if m.startswith("opentelemetry")),
    "threads": sorted(t.name for t in threading.enumerate()),
    "keys": sorted(entry),
}))
"""
#: redis-py imports OpenTelemetry's metrics SDK by itself whenever it is installed.
BASELINE = "import json, sys, redis; print(json.dumps(sorted(m for m in sys.modules if m.startswith('opentelemetry'))))"


def probe(code: str, endpoint: str) -> object:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBEDSTREAM_", "OTEL_"))}
    env["EMBEDSTREAM_OTEL_ENDPOINT"] = endpoint
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_tracing_off_imports_nothing_of_opentelemetry() -> None:
    """With no endpoint, importing and setting up gateway and worker code imports no
    OpenTelemetry module beyond those redis-py imports itself, and starts no thread."""
    off = probe(PROBE, "")
    assert isinstance(off, dict)
    assert not off["enabled"] and off["imported"] == probe(BASELINE, "")
    assert not [m for m in off["imported"] if m.startswith(("opentelemetry.sdk.trace", "opentelemetry.exporter"))]
    assert off["threads"] == ["MainThread"]
    assert off["keys"] == ["d", "i", "q", "r", "t", "u", "v"]
    on = probe(PROBE, "http://127.0.0.1:9")  # the same probe sees the difference when tracing is on
    assert isinstance(on, dict)
    assert on["enabled"] and {"opentelemetry.sdk.trace", "opentelemetry.exporter.otlp"} <= set(on["imported"])
    assert "OtelBatchSpanRecordProcessor" in on["threads"]


def test_tracing_off_queues_entries_without_a_trace_field(
    redis_server: RedisServer, r: redis.Redis, registry: Path, log_dir: Path
) -> None:
    gateway, port = start_gateway(plain_env(redis_server.url, registry), log_dir)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            jobs = jpb_grpc.JobsStub(channel)
            header, _, _ = traceparent()
            job = jobs.SubmitJob(
                jpb.SubmitJobRequest(spec=jpb.JobSpec(model=IDLE), inputs=[pb.Input(text="a"), pb.Input(text="b")]),
                metadata=[("traceparent", header)],
                timeout=10,
            )
            [entry] = raw_bulk_entries(r, job.id)
            jobs.CancelJob(jpb.GetJobRequest(id=job.id), timeout=10)
        assert "tr" not in entry and entry["t"] == ["a", "b"]
        assert wire.decode_job(msgpack.packb(entry, use_bin_type=True)).trace == ""
    finally:
        gateway.stop()
        r.delete(keys.bulk(IDLE))
