"""`embedstream serve` brings everything up and Ctrl-C stops all of it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from embedstream.redis_server import free_port
from embedstream.v1 import embedder_pb2 as pb
from tests.support import ROOT
from tests.support.processes import base_env, stub, wait_until


def check(port: int, service: str, env: dict[str, str]) -> int:
    args = [sys.executable, "-m", "embedstream", "check", "--port", str(port), "--service", service]
    return subprocess.run(args, env=env, capture_output=True, cwd=ROOT).returncode


def test_serve_starts_redis_gateway_workers_and_stops_on_sigint(tmp_path: Path) -> None:
    registry = tmp_path / "models.toml"
    registry.write_text('[models.debug]\nfamily = "debug"\ndimensions = 8\n')
    port = free_port()
    env = base_env("", registry)
    del env["EMBEDSTREAM_REDIS_URL"]
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "embedstream", "serve", "--port", str(port), "--data-dir", str(tmp_path / "data")],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: check(port, "debug", env) == 0, 60, interval=0.3, what="serve to be SERVING")
        with stub(port) as s:
            resp = s.Embed(pb.EmbedRequest(inputs=[pb.Input(text="hello")]), timeout=10)
        assert resp.model == "debug" and len(resp.embeddings[0].values) == 8
        assert (tmp_path / "data/redis/appendonlydir").is_dir()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    started = time.monotonic()
    assert check(port, "", env) != 0
    assert time.monotonic() - started < 5
    text = (tmp_path / "serve.log").read_text()
    assert "worker" in text and "stopped" in text and "Traceback" not in text


def test_check_fails_without_a_gateway_in_one_line() -> None:
    env = base_env("", Path("/nonexistent"))
    port = free_port()
    args = [sys.executable, "-m", "embedstream", "check", "--port", str(port)]
    result = subprocess.run(args, env=env, capture_output=True, cwd=ROOT, text=True)
    assert result.returncode == 1
    assert (
        result.stderr
        == f"embedstream check: UNAVAILABLE: cannot reach the gateway at 127.0.0.1:{port}: connection refused\n"
    )


def test_bad_config_exits_2_with_the_key() -> None:
    env = base_env("", Path("/nonexistent"), EMBEDSTREAM_PORT="nope")
    result = subprocess.run([sys.executable, "-m", "embedstream", "gateway"], env=env, capture_output=True, cwd=ROOT)
    assert result.returncode == 2 and b"EMBEDSTREAM_PORT" in result.stderr
