"""Several hosts on one machine (network namespaces): Redis on one, two gateways, workers on
two more, a client spreading calls over both gateways. Killing a gateway host or a worker
host loses no request, and the rest carries on."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.netns import Host, Network, unavailable_reason
from tests.support.processes import wait_until

REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(bool(REASON), reason=f"multi-host test needs network namespaces: {REASON}")

REGISTRY = """
default = "spread"

[models.spread]
family = "debug"
dimensions = 16
latency_ms = 20
max_batch_size = 8
"""

# Runs inside the client host: unary calls over a round-robin channel to both gateways,
# through the Python client (which retries UNAVAILABLE), until the stop file appears.
CLIENT = r"""
import json, sys, time, pathlib
import numpy as np
from embedstream.client import Client, Retry
from embedstream.workers.debug import debug_vectors
target, stop, out = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
sent = ok = wrong = failed = 0
errors = []
with Client(target, model="spread", timeout=30, retry=Retry(attempts=30, initial_s=0.1, max_s=1.0)) as client:
    while not stop.exists():
        texts = [f"call {sent} text {i}" for i in range(4)]
        sent += 1
        try:
            got = client.embed(texts)
        except Exception as exc:
            failed += 1
            errors.append(repr(exc)[:300])
            continue
        want = debug_vectors(texts, 16, [True] * 4)
        if got.shape == want.shape and np.abs(got - want).max() < 1e-6:
            ok += 1
        else:
            wrong += 1
        state = {"sent": sent, "ok": ok, "wrong": wrong, "failed": failed, "errors": errors[:5]}
        out.write_text(json.dumps(state))
state = {"sent": sent, "ok": ok, "wrong": wrong, "failed": failed, "errors": errors[:5], "done": True}
out.write_text(json.dumps(state))
"""


@pytest.fixture
def network() -> Iterator[Network]:
    net = Network(f"{os.getpid() % 10000}", subnet=77 + os.getpid() % 100)
    yield net
    net.close()


def progress(path: Path) -> dict[str, object]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {"sent": 0, "ok": 0}


def test_killing_a_gateway_host_or_a_worker_host_loses_no_request(
    network: Network, tmp_path: Path, log_dir: Path
) -> None:
    registry = tmp_path / "models.toml"
    registry.write_text(REGISTRY)
    redis_host = network.host("redis")
    gateways = [network.host("gw1"), network.host("gw2")]
    workers = [network.host("w1"), network.host("w2")]
    client_host = network.host("client")
    binary = shutil.which("redis-server")
    assert binary is not None
    redis_host.run(
        [
            binary,
            "--bind",
            redis_host.address,
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--dir",
            str(tmp_path),
        ],
        dict(os.environ),
        log_dir / "netns-redis.log",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDSTREAM_")}
    env.update(
        EMBEDSTREAM_REDIS_URL=f"redis://{redis_host.address}:6379/0",
        EMBEDSTREAM_REGISTRY=str(registry),
        EMBEDSTREAM_VISIBILITY_TIMEOUT_S="2",
        EMBEDSTREAM_HEARTBEAT_S="0.3",
        EMBEDSTREAM_WORKER_LIVENESS_S="3",
        EMBEDSTREAM_REDIS_TIMEOUT_S="1",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    wait_until(lambda: _reachable(redis_host.address, 6379, client_host), 10, what="redis on its host")
    for host in gateways:
        gateway_env = dict(env, EMBEDSTREAM_HOST=host.address, EMBEDSTREAM_PORT="50051")
        host.embedstream(["gateway"], gateway_env, log_dir / f"netns-{host.name}.log")
    # The second worker host joins late: it must take work at once.
    workers[0].embedstream(["worker", "--model", "spread"], env, log_dir / "netns-w1.log")
    for host in gateways:
        wait_until(lambda h=host: _reachable(h.address, 50051, client_host), 60, what=f"gateway on {host.name}")

    stop, out = tmp_path / "stop", tmp_path / "progress.json"
    target = ",".join(f"{h.address}:50051" for h in gateways)
    client = client_host.run(
        [sys.executable, "-c", CLIENT, target, str(stop), str(out)], env, log_dir / "netns-client.log"
    )
    try:
        wait_until(lambda: progress(out)["ok"] >= 50, 90, what="calls answered through both gateways")
        late_env = dict(env, EMBEDSTREAM_METRICS_PORT="9100")
        workers[1].embedstream(["worker", "--model", "spread"], late_env, log_dir / "netns-w2.log")
        wait_until(lambda: _replies(client_host, workers[1]) > 0, 60, what="the late worker to take work at once")

        before = progress(out)["ok"]
        gateways[0].kill()  # a gateway host loses power
        wait_until(lambda: progress(out)["ok"] >= before + 100, 60, what="calls to carry on after a gateway host died")
        before = progress(out)["ok"]
        workers[0].kill()  # a worker host loses power, holding work
        wait_until(lambda: progress(out)["ok"] >= before + 100, 60, what="calls to carry on after a worker host died")
    finally:
        stop.write_text("stop")
        client.wait(60)
    final = progress(out)
    print(f"MULTIHOST: {final}")
    assert final.get("done") and final["failed"] == 0 and final["wrong"] == 0, final
    assert final["ok"] == final["sent"]


def _reachable(address: str, port: int, host: Host) -> bool:
    code = f"import socket; socket.create_connection(({address!r}, {port}), timeout=1); print('ok')"
    return host.tmp_output([sys.executable, "-c", code]).strip() == "ok"


def _replies(client_host: Host, worker: Host) -> float:
    """Entries the worker on ``worker`` has answered, read from its /metrics over the network."""
    code = (
        "import urllib.request, re;"
        f"body = urllib.request.urlopen('http://{worker.address}:9100/metrics', timeout=2).read().decode();"
        "print(sum(float(v) for v in re.findall(r'^embedstream_worker_replies_total\\{[^}]*\\} (\\S+)', body, re.M)))"
    )
    out = client_host.tmp_output([sys.executable, "-c", code])
    try:
        return float(out.strip() or 0)
    except ValueError:
        return 0.0
