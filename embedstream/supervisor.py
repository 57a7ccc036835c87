"""`embedstream serve`: one machine's whole service as supervised child processes.

Redis (unless ``EMBEDSTREAM_REDIS_URL`` names one), a gateway and one worker per registry model,
each started as ``python -m embedstream <role>`` in a session of its own, so Ctrl-C reaches only
the supervisor, which then stops the gateway, the workers and Redis last, in that order. A child
that dies is restarted, except one that exits 2: that is a configuration error (a bad registry
entry, weights that do not fit), and restarting it would only fail again.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from embedstream import registryfile
from embedstream.redis_server import RedisServer, free_port
from embedstream.settings import Settings, redact_url

log = logging.getLogger("embedstream")

#: How long ``serve`` waits for each child after SIGTERM: the gateway's default
#: shutdown delay and grace, with room to spare.
STOP_WAIT_S = 40
#: The exit status of a configuration error (``embedstream`` exits 2 on ConfigError).
CONFIG_ERROR = 2


def serve(settings: Settings, data_dir: Path) -> int:
    """Redis (unless settings name one), a gateway and a worker per registry model, until a signal."""
    registry = registryfile.load(settings.registry)
    env = dict(os.environ)
    redis = None
    if not settings.redis_url:
        redis = RedisServer(data_dir.resolve() / "redis")
        env["EMBEDSTREAM_REDIS_URL"] = redis.url
    else:
        log.info("using Redis at %s", redact_url(settings.redis_url))
    env["EMBEDSTREAM_PORT"] = str(settings.port)
    env["EMBEDSTREAM_HTTP_PORT"] = str(settings.http_port)
    env["EMBEDSTREAM_THREADS"] = str(settings.threads)
    if settings.registry:
        env["EMBEDSTREAM_REGISTRY"] = str(Path(settings.registry).resolve())
    base = [sys.executable, "-m", "embedstream"]
    roles = {"gateway": [*base, "gateway"]} | {f"worker:{n}": [*base, "worker", "--model", n] for n in registry.models}
    ports = metrics_ports(settings.metrics_port, list(roles))
    children = {
        name: Child(name, cmd, env | {"EMBEDSTREAM_METRICS_PORT": str(ports[name])}) for name, cmd in roles.items()
    }
    # With TLS the supervisor holds no certificate to probe with; `embedstream check --tls-ca` does.
    supervisor = Supervisor(children, redis)
    if not settings.tls_cert:
        supervisor.ready = _ready_check(settings, supervisor, ports)
    supervisor.run()
    return supervisor.exit_code


def metrics_ports(base: int, names: list[str]) -> dict[str, int]:
    """One /metrics port per child: ``base``, ``base + 1``, ... in order, or free ports when ``base`` is 0."""
    if base:
        return {name: base + i for i, name in enumerate(names)}
    return {name: free_port() for name in names}


class Child:
    """One supervised process: its command, environment and current Popen."""

    def __init__(self, name: str, command: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.failed = False

    def start(self) -> None:
        """Start it in a session of its own, out of reach of the terminal's Ctrl-C."""
        self.proc = subprocess.Popen(self.command, env=self.env, start_new_session=True)

    def exited(self) -> int | None:
        """Its exit status once it has ended, else None."""
        return None if self.proc is None else self.proc.poll()

    def signal(self, signum: int) -> None:
        """Send ``signum`` if it runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)

    def wait(self, timeout_s: float) -> None:
        """Wait for it to end; kill it after ``timeout_s``."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0f s; killing it", self.name, timeout_s)
            self.proc.kill()
            self.proc.wait()


class Supervisor:
    """Keeps Redis and the children running until SIGINT/SIGTERM, then stops them in order."""

    def __init__(
        self, children: dict[str, Child], redis: RedisServer | None, ready: Callable[[], bool] | None = None
    ) -> None:
        self.children = children
        self.redis = redis
        self.ready = ready
        self.exit_code = 0
        self._stop = False

    def run(self) -> None:
        """Start everything; restart what dies (not a configuration error); return after a signal."""
        signal.signal(signal.SIGTERM, self._signal)
        signal.signal(signal.SIGINT, self._signal)
        signal.signal(signal.SIGHUP, self._reload)
        announced = False
        try:
            if self.redis is not None:
                self.redis.start(new_session=True)
                log.info("started redis-server on port %d (AOF in %s)", self.redis.port, self.redis.data_dir)
            for child in self.children.values():
                child.start()
            while not self._stop:
                time.sleep(0.2)
                self._keep_redis()
                for child in self.children.values():
                    self._keep(child)
                if not announced and self.ready is not None and self.ready():
                    announced = True
        finally:
            self._stop_all()

    def _keep(self, child: Child) -> None:
        code = child.exited()
        if code is None or child.failed or self._stop:
            return
        if code == CONFIG_ERROR and child.name == "gateway":
            log.error("the gateway exited with a configuration error (reason above); stopping")
            self.exit_code, self._stop = CONFIG_ERROR, True
            return
        if code == CONFIG_ERROR:
            child.failed = True
            log.error("%s exited with a configuration error (status 2, reason above); not restarting it", child.name)
            return
        log.error("%s exited with %s; restarting in 1 s", child.name, code)
        time.sleep(1)
        child.start()

    def _keep_redis(self) -> None:
        if self.redis is None or self._stop or self.redis.proc is None or self.redis.proc.poll() is None:
            return
        # Same port and data dir: it replays its AOF, and the children reconnect by themselves.
        log.error("redis-server exited with %s; restarting it from its AOF", self.redis.proc.returncode)
        self.redis.start(new_session=True)

    def _stop_all(self) -> None:
        log.info("stopping: gateway first, then workers, then Redis")
        ordered = sorted(self.children.values(), key=lambda c: c.name != "gateway")
        gateway = [c for c in ordered if c.name == "gateway"]
        workers = [c for c in ordered if c.name != "gateway"]
        # The gateway drains first (NOT_SERVING, then its grace) while workers finish what they
        # hold; Redis stops last so everyone can hand back and acknowledge on the way out.
        for group in (gateway, workers):
            for child in group:
                child.signal(signal.SIGTERM)
            for child in group:
                child.wait(STOP_WAIT_S)
        if self.redis is not None:
            self.redis.stop()

    def _signal(self, signum: int, frame: object) -> None:
        self._stop = True

    def _reload(self, signum: int, frame: object) -> None:
        # SIGHUP rereads the gateway's API key file; the workers have nothing to reload.
        gateway = self.children.get("gateway")
        if gateway is not None:
            gateway.signal(signal.SIGHUP)


def _ready_check(settings: Settings, supervisor: Supervisor, ports: dict[str, int]) -> Callable[[], bool]:
    """A probe that prints one "ready" line with the addresses once every model serves (or failed to load)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = f"{'127.0.0.1' if settings.host in ('0.0.0.0', '::', '[::]') else settings.host}:{settings.port}"
    last = [0.0]

    def ready() -> bool:
        now = time.monotonic()
        if now - last[0] < 1.0:
            return False
        last[0] = now
        failed = [c.name.removeprefix("worker:") for c in supervisor.children.values() if c.failed]
        models = [c.name.removeprefix("worker:") for c in supervisor.children.values() if c.name.startswith("worker:")]
        serving = [name for name in models if name not in failed]
        try:
            with grpc.insecure_channel(target) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                for name in serving:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=1)
                    if reply.status != health_pb2.HealthCheckResponse.SERVING:
                        return False
        except grpc.RpcError:
            return False
        metrics = ", ".join(f"{name} :{port}" for name, port in ports.items())
        broken = f"; FAILED to load: {', '.join(failed)} (reason above)" if failed else ""
        http = f"; HTTP on http://{target.rpartition(':')[0]}:{settings.http_port}" if settings.http_port > 0 else ""
        line = f"embedstream ready: gRPC on {target}{http}; models {', '.join(serving)}{broken}; metrics {metrics}"
        print(line, flush=True)
        return True

    return ready
