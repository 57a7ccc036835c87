"""The health checks of deploy/ (Kubernetes probes, compose and Dockerfile HEALTHCHECKs) run against real servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc
import redis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from embedstream.redis_server import RedisServer, free_port
from embedstream.settings import ENV_PREFIX
from tests.support.deploy import GRPC_PORT, compose, one, overlay, pod_spec, stage
from tests.support.processes import base_env, start_worker, wait_until


def _probe(command: list[str], port: int, default_port: str) -> int:
    """Exit status of a probe command with its port pointed at ``port``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["EMBEDSTREAM_PORT"] = str(port)  # the image's HEALTHCHECK takes the port from here
    command = [part.replace(default_port, str(port)) for part in command]
    return subprocess.run(command, env=env, capture_output=True, timeout=60).returncode


def _gateway_probes() -> dict[str, list[str]]:
    container = pod_spec(one(overlay("cpu"), "Deployment", "embedstream-gateway"))["containers"][0]
    probes = {p: container[p]["exec"]["command"] for p in ("startupProbe", "readinessProbe", "livenessProbe")}
    test = compose()["services"]["gateway"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    probes["compose"] = test[1:]
    for file in ("Dockerfile", "Dockerfile.cuda"):
        (healthcheck,) = stage(file, -1, "HEALTHCHECK")
        assert healthcheck[0] == "CMD"
        probes[file] = list(healthcheck[1:])
    return probes


def test_gateway_probes_follow_grpc_health() -> None:
    probes = _gateway_probes()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    unique = {tuple(c) for c in probes.values()}
    try:
        results: dict[tuple[str, ...], list[int]] = {c: [] for c in unique}
        for status in (health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING):
            servicer.set("", status)
            for command in unique:
                results[command].append(_probe(list(command), port, str(GRPC_PORT)))
    finally:
        server.stop(None)
    nobody = free_port()
    for command in unique:
        results[command].append(_probe(list(command), nobody, str(GRPC_PORT)))
    # [SERVING, NOT_SERVING, nothing listening]: 0 means the probe passes.
    for name, command in probes.items():
        got = [code == 0 for code in results[tuple(command)]]
        want = [True, True, False] if name == "livenessProbe" else [True, False, False]
        assert got == want, f"{name} {command}: passes {got}, wanted {want}"


def test_worker_probes_run_embedstream_check_against_a_real_worker(
    redis_server: RedisServer, r: redis.Redis, registry_file: Path, log_dir: Path
) -> None:
    container = pod_spec(one(overlay("cpu"), "Deployment", "embedstream-worker-all-minilm-l6-v2"))["containers"][0]
    probes = {p: container[p]["exec"]["command"] for p in ("startupProbe", "readinessProbe", "livenessProbe")}
    test = compose()["services"]["worker"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    probes["compose"] = test[1:]
    for command in probes.values():
        assert command[:3] == ["embedstream", "check", "--worker"], command
    port = free_port()
    env = base_env(redis_server.url, registry_file, EMBEDSTREAM_METRICS_PORT=str(port), EMBEDSTREAM_HEARTBEAT_S="0.2")
    worker = start_worker(env, log_dir, "debug", r)
    probe_env = dict(env, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")

    def run(command: list[str]) -> int:
        return subprocess.run(command, env=probe_env, capture_output=True, timeout=60).returncode

    try:
        wait_until(lambda: all(run(c) == 0 for c in probes.values()), 20, what="every probe to pass")
        worker.signal(signal.SIGSTOP)  # a wedged process: its loop stops ticking
        try:
            # /metrics is served by another thread, and it stops too: the probe cannot connect.
            assert run([*probes["livenessProbe"][:3], "--max-age", "1"]) != 0
        finally:
            worker.signal(signal.SIGCONT)
    finally:
        worker.stop()
    assert all(run(c) != 0 for c in probes.values())  # no worker, no pass
