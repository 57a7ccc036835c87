"""`embedstream serve`: one machine's whole service as supervised child processes.

Redis (unless ``EMBEDSTREAM_REDIS_URL`` names one), a gateway and one worker per registry model,
each started as ``python -m embedstream <role>``; a child that dies is restarted, and a signal
stops the gateway first, then the workers.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from embedstream import registry as registry_mod
from embedstream.redis_server import RedisServer
from embedstream.settings import Settings, redact_url

log = logging.getLogger("embedstream")


def serve(settings: Settings, data_dir: Path) -> int:
    """Redis (unless settings name one), a gateway and a worker per registry model, until a signal."""
    registry = registry_mod.load(settings.registry)
    redis = None
    env = dict(os.environ)
    if not settings.redis_url:
        redis = RedisServer(data_dir.resolve() / "redis").start()
        env["EMBEDSTREAM_REDIS_URL"] = redis.url
        log.info("started redis-server on port %d (AOF in %s)", redis.port, redis.data_dir)
    else:
        log.info("using Redis at %s", redact_url(settings.redis_url))
    env["EMBEDSTREAM_PORT"] = str(settings.port)
    env["EMBEDSTREAM_HTTP_PORT"] = str(settings.http_port)
    env["EMBEDSTREAM_THREADS"] = str(settings.threads)
    if settings.registry:
        env["EMBEDSTREAM_REGISTRY"] = str(Path(settings.registry).resolve())
    base = [sys.executable, "-m", "embedstream"]
    commands = {"gateway": [*base, "gateway"]}
    for name in registry.models:
        commands[f"worker:{name}"] = [*base, "worker", "--model", name]
    supervisor = Supervisor(commands, env)
    try:
        supervisor.run()
    finally:
        if redis is not None:
            redis.stop()
    return 0


#: How long ``serve`` waits for each child after SIGTERM: the gateway's default
#: shutdown delay and grace, with room to spare.
STOP_WAIT_S = 40


class Supervisor:
    """Keeps child processes running until SIGINT/SIGTERM, then stops them in order."""

    def __init__(self, commands: dict[str, list[str]], env: dict[str, str]) -> None:
        self.commands = commands
        self.env = env
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self._stop = False

    def run(self) -> None:
        """Start every child; restart any that dies; return after a signal."""
        signal.signal(signal.SIGTERM, self._signal)
        signal.signal(signal.SIGINT, self._signal)
        signal.signal(signal.SIGHUP, self._reload)
        for name in self.commands:
            self._spawn(name)
        while not self._stop:
            time.sleep(0.2)
            for name, proc in list(self.children.items()):
                code = proc.poll()
                if code is not None and not self._stop:
                    log.error("%s exited with %s; restarting in 1 s", name, code)
                    time.sleep(1)
                    self._spawn(name)
        log.info("stopping: gateway first, then workers")
        ordered = sorted(self.children.items(), key=lambda kv: kv[0] != "gateway")
        for _, proc in ordered:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in ordered:
            try:
                proc.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %d s; killing it", name, STOP_WAIT_S)
                proc.kill()
                proc.wait()

    def _spawn(self, name: str) -> None:
        # New process group: Ctrl-C reaches only the supervisor, which then
        # stops the children in order instead of all at once.
        self.children[name] = subprocess.Popen(self.commands[name], env=self.env, start_new_session=True)

    def _signal(self, signum: int, frame: object) -> None:
        self._stop = True

    def _reload(self, signum: int, frame: object) -> None:
        # SIGHUP rereads the gateway's API key file; the workers have nothing to reload.
        gateway = self.children.get("gateway")
        if gateway is not None and gateway.poll() is None:
            gateway.send_signal(signal.SIGHUP)
