"""EMBEDSTREAM_LOG_FORMAT=json: every line a gateway or a worker writes is one JSON object."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from embedstream import logs
from embedstream.redis_server import RedisServer
from embedstream.v1 import embedder_pb2 as pb
from tests.support import ROOT
from tests.support.otlp import Collector, traceparent
from tests.support.processes import base_env, start_gateway, start_worker, stub

MODEL = "json-debug"
KEYS = {"ts", "level", "logger", "message", "pid", "role"}


def parse(text: str) -> list[dict[str, Any]]:
    """Every line of a log as JSON; fails on the first line that is not a JSON object."""
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    for line in lines:
        assert isinstance(line, dict) and KEYS <= set(line), line
        ts = datetime.fromisoformat(line["ts"])
        assert line["ts"].endswith("Z") and ts.utcoffset() == UTC.utcoffset(None)
    return lines


def test_gateway_and_worker_write_only_json_lines(
    redis_server: RedisServer, r: redis.Redis, tmp_path: Path, log_dir: Path
) -> None:
    registry = tmp_path / "models.toml"
    registry.write_text(f'default = "{MODEL}"\n[models.{MODEL}]\nfamily = "debug"\ndimensions = 8\n')
    collector = Collector().start()
    env = base_env(
        redis_server.url,
        registry,
        EMBEDSTREAM_LOG_FORMAT="json",
        EMBEDSTREAM_LOG_LEVEL="DEBUG",
        EMBEDSTREAM_OTEL_ENDPOINT=collector.endpoint,
        EMBEDSTREAM_THREADS="1",
    )
    try:
        gateway, port = start_gateway(env, log_dir)  # finds the port in the JSON line
        worker = start_worker(env, log_dir, MODEL, r)
        header, trace_id, _ = traceparent()
        with stub(port) as embedder:
            embedder.Embed(pb.EmbedRequest(inputs=[pb.Input(text="a text")]), timeout=10)
            with pytest.raises(grpc.RpcError) as bad:
                embedder.Embed(pb.EmbedRequest(inputs=[]), metadata=[("traceparent", header)], timeout=10)
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert gateway.stop() == 0 and worker.stop() == 0
    finally:
        collector.stop()

    gateway_lines, worker_lines = parse(gateway.log()), parse(worker.log())
    assert {(line["role"], line["pid"]) for line in gateway_lines} == {("gateway", gateway.pid)}
    assert {(line["role"], line["pid"], line["model"]) for line in worker_lines} == {("worker", worker.pid, MODEL)}
    messages = [line["message"] for line in gateway_lines]
    assert f"embedstream gateway listening on 127.0.0.1:{port}" in messages
    assert any(m.startswith("gateway ") and m.endswith(" stopped") for m in messages)
    [refusal] = [line for line in gateway_lines if line["message"].startswith("Embed ended INVALID_ARGUMENT")]
    assert refusal["level"] == "DEBUG" and refusal["logger"] == "embedstream.gateway.status"
    assert refusal["trace_id"] == trace_id and len(refusal["span_id"]) == 16
    assert not [line for line in gateway_lines if "listening on" in line["message"] and "trace_id" in line]
    worker_messages = [line["message"] for line in worker_lines]
    assert any(" serving model " in m for m in worker_messages)
    assert any(m.startswith("worker ") and m.endswith(" stopped") for m in worker_messages)


def test_json_lines_carry_the_exception_text() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("tests.logs.exception")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        raise ValueError("the reason")
    except ValueError:
        logger.exception("it failed", extra={"model": "m1"})
    finally:
        logger.removeHandler(handler)
    [line] = [json.loads(text) for text in out.getvalue().splitlines()]
    assert line["level"] == "ERROR" and line["message"] == "it failed" and line["model"] == "m1"
    assert line["exception"].startswith("Traceback") and "ValueError: the reason" in line["exception"]
    assert line["pid"] == os.getpid() and "trace_id" not in line


def test_an_uncaught_exception_is_a_json_line_too() -> None:
    code = "from embedstream import logs\nlogs.setup('INFO', 'json', 'worker')\nraise RuntimeError('boom')\n"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    [line] = parse(run.stderr)
    assert line["level"] == "CRITICAL" and line["role"] == "worker" and "RuntimeError: boom" in line["exception"]
