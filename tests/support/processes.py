"""Real embedstream processes for tests: gateways and workers started through the CLI."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import redis

from embedstream import keys, replywire
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc
from tests.support import ROOT


class Proc:
    """A child process whose output goes to a log file named after it."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path, python: str = "") -> None:
        self.name = name
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [python or sys.executable, "-m", "embedstream", *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 20) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait()
        self._log.close()


def base_env(redis_url: str, registry: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDSTREAM_")}
    env.update(
        EMBEDSTREAM_REDIS_URL=redis_url,
        EMBEDSTREAM_REGISTRY=str(registry),
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        EMBEDSTREAM_SHUTDOWN_DELAY_S="0.2",
        # Many gateways run at once in tests: each takes a free HTTP port (the default is 8080).
        EMBEDSTREAM_HTTP_PORT="0",
        # The embedding cache would answer a repeated text without the model, which tests of the
        # model, of slow models and deadlines, and benchmarks must not see. Tests of the cache
        # (tests/test_cache*.py), the fault suite and the docs' service turn it on.
        EMBEDSTREAM_CACHE_BYTES="0",
    )
    if "EMBEDSTREAM_ONNX_CACHE" in os.environ:  # the run's graphs (tests/conftest.py), not ~/.cache
        env["EMBEDSTREAM_ONNX_CACHE"] = os.environ["EMBEDSTREAM_ONNX_CACHE"]
    env.update(extra)
    return env


def start_gateway(env: dict[str, str], log_dir: Path, timeout: float = 30, port: int = 0) -> tuple[Proc, int]:
    """A gateway on ``port`` (0: a free one); returns it and the port once it listens."""
    proc = Proc("gateway", ["gateway", "--port", str(port)], env, log_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"listening on [^\s:]+:(\d+)", proc.log())
        if found:
            return proc, int(found.group(1))
        if not proc.alive():
            raise RuntimeError(f"gateway exited:\n{proc.log()}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"gateway did not start:\n{proc.log()}")


def start_worker(
    env: dict[str, str], log_dir: Path, model: str, r: redis.Redis, timeout: float = 90, python: str = ""
) -> Proc:
    """A worker for ``model`` (run by the interpreter ``python``, else this one); returns once its
    heartbeat is in Redis."""
    export_graphs(env, [model])
    proc = Proc(f"worker-{model}", ["worker", "--model", model], env, log_dir, python)
    return wait_worker(proc, model, r, timeout)


def start_workers(
    env: dict[str, str], log_dir: Path, models: list[str], r: redis.Redis, timeout: float = 180
) -> dict[str, Proc]:
    """Workers for ``models``, started together; returns once every heartbeat is in Redis."""
    export_graphs(env, models)
    procs = {model: Proc(f"worker-{model}", ["worker", "--model", model], env, log_dir) for model in models}
    try:
        return {model: wait_worker(proc, model, r, timeout) for model, proc in procs.items()}
    except BaseException:
        # A fixture that fails never reaches its teardown: stop the others here, or they outlive the run.
        for proc in procs.values():
            proc.kill()
        raise


def export_graphs(env: dict[str, str], models: list[str]) -> None:
    """The onnx engine's graphs of ``models`` exported here first, where torch is loaded anyway (~1 s for a
    tiny model), not by each worker in a process of its own (~15 s on 2 busy cores: torch's import)."""
    import torch  # noqa: F401  (onnxengine exports in this process once torch is in it)

    from embedstream import registryfile
    from embedstream.errors import ConfigError, NotFound
    from embedstream.workers import onnxengine

    try:
        registry = registryfile.load(env.get("EMBEDSTREAM_REGISTRY", ""))
        specs = [registry.resolve(model) for model in models]
    except (ConfigError, NotFound, OSError):
        return  # the worker itself reports what is wrong with its registry or model
    for spec in specs:
        if spec.engine != "torch" and not onnxengine.unfit(spec):
            try:
                onnxengine.graph(spec, env.get("EMBEDSTREAM_ONNX_CACHE", ""))
            except ConfigError:
                pass  # the worker meets the same failure and handles it as it would anyway


def wait_worker(proc: Proc, model: str, r: redis.Redis, timeout: float) -> Proc:
    """``proc`` once its heartbeat for ``model`` is in Redis."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        members = r.zrange(keys.workers(model), 0, -1)
        if any(m.decode().endswith(_suffix(proc.pid)) or f"-{proc.pid}-" in m.decode() for m in members):
            return proc
        if not proc.alive():
            raise RuntimeError(f"worker exited:\n{proc.log()}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"worker did not start:\n{proc.log()}")


def _suffix(pid: int) -> str:
    return f"-{pid}"


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@contextmanager
def stub(port: int) -> Iterator[embedder_pb2_grpc.EmbedderStub]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield embedder_pb2_grpc.EmbedderStub(channel)


def answers(port: int, model: str, text: str = "ping", timeout: float = 2) -> bool:
    """Whether the gateway on ``port`` answers one Embed of ``text`` for ``model`` (a gRPC error: no)."""
    try:
        with stub(port) as s:
            s.Embed(pb.EmbedRequest(model=model, inputs=[pb.Input(text=text)]), timeout=timeout)
        return True
    except grpc.RpcError:
        return False


def entries_added(r: redis.Redis, model: str, stream: Callable[[str], str] | None = None) -> int:
    """How many entries were ever XADDed to the model's streams (``keys.lanes``), or to the
    one ``stream`` names (``keys.bulk``, say); 0 for a stream not made yet."""
    added = 0
    for name in [stream(model)] if stream else keys.lanes(model):
        try:
            added += int(r.xinfo_stream(name)["entries-added"])
        except redis.ResponseError:
            pass
    return added


def read_replies(r: redis.Redis, stream: str, count: int, timeout: float = 60) -> dict[str, replywire.Reply]:
    """The first ``count`` worker replies written to ``stream`` (a test's own reply stream), by id."""
    answers: dict[str, replywire.Reply] = {}
    last = "0-0"
    deadline = time.monotonic() + timeout
    while len(answers) < count and time.monotonic() < deadline:
        for _, entries in r.xread({stream: last}, block=500) or []:
            for entry_id, fields in entries:
                last = entry_id
                if keys.PAYLOAD.encode() in fields:
                    reply = replywire.decode_reply(fields[keys.PAYLOAD.encode()])
                    answers[reply.id] = reply
    return answers


def scrape(port: int) -> dict[str, float]:
    """A process's Prometheus metrics, summed per name+labels as text keys."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = defaultdict(float)
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] += float(value)
    return out


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m embedstream *args`` to completion (60 s at most), capturing its text output."""
    return subprocess.run(
        [sys.executable, "-m", "embedstream", *args], env=env, capture_output=True, text=True, cwd=ROOT, timeout=60
    )


def from_a_terminal() -> None:
    """``preexec_fn`` for a process a test interrupts as Ctrl-C would: SIGINT at its default.
    A run started in the background (a non-interactive shell's ``&``, as some CI runners do)
    ignores SIGINT and its children inherit that, so the signal would reach nobody."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
