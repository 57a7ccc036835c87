"""A small cluster of real processes for fault injection, and the scorecard every scenario prints.

Each scenario gets its own redis-server, gateways and workers (the debug model:
deterministic vectors, a per-batch latency, and trigger words that raise, exit,
return NaN or hang), so killing any of them touches nothing else. The
:class:`Ledger` records what was asked and what came back; :func:`score` turns
that and the state left in Redis into one line:

    SCORECARD <scenario>: lost=0 duplicated=0 mixed_up=0 non_finite=0 recovery_s=1.4 pending=0 leftover_keys=0
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import redis

from embedstream import keys
from embedstream.redis_server import RedisServer, free_port
from embedstream.v1 import embedder_pb2 as pb
from embedstream.workers.debug import debug_vectors
from tests.support.processes import Proc, base_env, start_gateway, wait_until

#: Every scenario's scorecard line, printed again at the end of the session.
SCORECARDS: list[str] = []
SCORE_FILE = Path(__file__).resolve().parents[2] / ".embedstream" / "scorecard.txt"

DIMENSIONS = 16

REGISTRY = f"""
default = "fault"

[models.fault]
family = "debug"
dimensions = {DIMENSIONS}
latency_ms = 30
max_batch_size = 8
max_queue_entries = 256
triggers = true

[models.backlog]
family = "debug"
dimensions = {DIMENSIONS}
latency_ms = 100
max_batch_size = 4
max_queue_entries = 16
triggers = true

[models.deep]
family = "debug"
dimensions = {DIMENSIONS}
latency_ms = 100
max_batch_size = 4
max_queue_entries = 1000

[models.quick]
family = "debug"
dimensions = {DIMENSIONS}
latency_ms = 5
max_batch_size = 64
max_queue_entries = 1000

[models.idle]
family = "debug"
dimensions = {DIMENSIONS}
scale_to_zero = true
"""
MODELS = ("fault", "backlog", "deep", "quick", "idle")

#: Faster clocks than production, so each scenario takes seconds.
FAST = {
    "EMBEDSTREAM_VISIBILITY_TIMEOUT_S": "1.5",
    "EMBEDSTREAM_HEARTBEAT_S": "0.2",
    "EMBEDSTREAM_WORKER_LIVENESS_S": "2",
    "EMBEDSTREAM_MAX_DELIVERIES": "2",
    "EMBEDSTREAM_BATCH_TIMEOUT_S": "1.5",
    "EMBEDSTREAM_REDIS_TIMEOUT_S": "1",
    "EMBEDSTREAM_THREADS": "1",
    "EMBEDSTREAM_SHUTDOWN_DELAY_S": "0.3",
    "EMBEDSTREAM_SHUTDOWN_GRACE_S": "10",
    # The embedding cache on, as served (a small budget, so eviction runs too): every scenario's
    # leftover-keys check covers its keys.
    "EMBEDSTREAM_CACHE_BYTES": str(256 * 1024),
}


def expected(texts: list[str]) -> np.ndarray:
    """What the debug model answers for ``texts`` (normalized)."""
    return debug_vectors(texts, DIMENSIONS, [True] * len(texts))


class Cluster:
    """Redis, gateways and workers as separate processes; a supervisor thread restarts
    workers that die (as systemd or Kubernetes would) when ``restart_workers`` is on."""

    def __init__(self, root: Path, log_dir: Path, appendonly: bool = False, **env: str) -> None:
        self.root = root
        self.log_dir = log_dir
        registry = root / "models.toml"
        registry.write_text(REGISTRY)
        self.redis_server = RedisServer(root / "redis", appendonly=appendonly, appendfsync="always").start()
        self.env = base_env(self.redis_server.url, registry, **{**FAST, **env})
        self.r = redis.Redis.from_url(self.redis_server.url)
        self.gateways: list[tuple[Proc, int]] = []
        self.workers: list[tuple[str, Proc]] = []
        self.deaths = 0
        self.restart_workers = False
        self._stop = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)
        self._supervisor.start()

    # -- processes ----------------------------------------------------------

    def gateway(self, port: int = 0, **env: str) -> tuple[Proc, int]:
        """Start a gateway (on ``port``, or a free one) and wait until it listens."""
        proc, bound = start_gateway(dict(self.env, **env), self.log_dir, port=port)
        self.gateways.append((proc, bound))
        return proc, bound

    def worker(self, model: str = "fault", wait: bool = True, **env: str) -> Proc:
        """Start a worker for ``model``; by default wait until its heartbeat is in Redis."""
        proc = Proc(f"worker-{model}", ["worker", "--model", model], self._env(**env), self.log_dir)
        self.workers.append((model, proc))
        if wait:
            self.wait_serving(model, proc)
        return proc

    def wait_serving(self, model: str, proc: Proc, timeout: float = 60) -> None:
        """Until ``proc``'s heartbeat for ``model`` is in Redis."""
        wait_until(
            lambda: any(f"-{proc.pid}-" in m.decode() for m in self.r.zrange(keys.workers(model), 0, -1)),
            timeout,
            what=f"worker {proc.pid} of {model} to serve",
        )

    def _env(self, **extra: str) -> dict[str, str]:
        return dict(self.env, **extra)

    def _supervise(self) -> None:
        while not self._stop.wait(0.1):
            if not self.restart_workers:
                continue
            for i, (model, proc) in enumerate(list(self.workers)):
                if not proc.alive():
                    self.deaths += 1
                    proc.kill()
                    replacement = Proc(f"worker-{model}", ["worker", "--model", model], self.env, self.log_dir)
                    self.workers[i] = (model, replacement)

    def live_workers(self, model: str = "fault") -> list[Proc]:
        return [proc for m, proc in self.workers if m == model and proc.alive()]

    def close(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL) and Redis."""
        self._stop.set()
        self._supervisor.join(2)
        for proc, _ in self.gateways:
            proc.stop()
        for _, proc in self.workers:
            proc.stop()
        self.r.close()
        self.redis_server.stop()

    # -- what Redis holds ----------------------------------------------------

    def pending(self, models: tuple[str, ...] = MODELS) -> int:
        """Entries delivered to a worker and not yet acknowledged, over every stream of each model."""
        total = 0
        for model in models:
            for stream in keys.lanes(model):
                try:
                    total += int(self.r.xpending(stream, keys.GROUP)["pending"])
                except redis.ResponseError:
                    pass
        return total

    def leftover_keys(self) -> list[str]:
        """Keys that would stay forever: no TTL, and not one of a model's standing keys
        (its streams, worker set, info hash, dead letters)."""
        standing = re.compile(r"^embedstream:\{m:[^}]+\}:(queue|streams|bulk|workers|info|dead)$")
        left = []
        for key in self.r.scan_iter(count=1000):
            name = key.decode()
            if not standing.match(name) and self.r.ttl(key) == -1:
                left.append(name)
        return left

    def dead_letters(self, model: str = "fault") -> list[dict[bytes, bytes]]:
        return [fields for _, fields in self.r.xrange(keys.dead_letters(model))]


def consumer_pending(r: redis.Redis, pid: int, model: str = "fault") -> int:
    """Entries the worker process ``pid`` holds unacknowledged in ``model``'s streams
    (consumer names are ``<host>-<pid>-<random>``)."""
    rows = []
    for stream in keys.lanes(model):
        with contextlib.suppress(redis.ResponseError):  # no such stream or group yet
            rows += r.xinfo_consumers(stream, keys.GROUP)
    return sum(int(row["pending"]) for row in rows if f"-{pid}-" in row["name"].decode())


def metrics_port() -> int:
    return free_port()


@dataclass
class Ledger:
    """Requests sent and every answer that came back for each (several answers = a duplicate)."""

    sent: dict[str, list[str]] = field(default_factory=dict)
    answers: dict[str, list[pb.EmbedResponse | grpc.StatusCode]] = field(default_factory=lambda: defaultdict(list))
    #: Requests expected to fail (poison), with the status they must get.
    doomed: dict[str, grpc.StatusCode] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, request_id: str, texts: list[str]) -> pb.EmbedRequest:
        with self.lock:
            self.sent[request_id] = texts
        return pb.EmbedRequest(model="fault", request_id=request_id, inputs=[pb.Input(text=t) for t in texts])

    def answer(self, request_id: str, outcome: pb.EmbedResponse | grpc.StatusCode) -> None:
        with self.lock:
            self.answers[request_id].append(outcome)

    def statuses(self) -> dict[str, int]:
        """How many requests ended with each status (first answer)."""
        out: dict[str, int] = defaultdict(int)
        for got in self.answers.values():
            out["OK" if isinstance(got[0], pb.EmbedResponse) else got[0].name] += 1
        return dict(out)

    def counts(self, allowed: tuple[grpc.StatusCode, ...] = ()) -> dict[str, int]:
        """lost: sent and never answered, or answered with an error it should not get
        (one not in ``allowed``, or a doomed request's wrong status); duplicated: more
        than one answer; mixed_up: a vector that is not its own input's; non_finite."""
        lost = duplicated = mixed_up = non_finite = 0
        for rid, texts in self.sent.items():
            got = self.answers.get(rid, [])
            if len(got) > 1:
                duplicated += 1
            if not got:
                lost += 1
                continue
            first = got[0]
            if isinstance(first, grpc.StatusCode):
                want = self.doomed.get(rid)
                if (want is not None and first != want) or (want is None and first not in allowed):
                    lost += 1
                continue
            if rid in self.doomed:
                mixed_up += 1  # a poison input got vectors
                continue
            vecs = np.array([list(e.values) for e in first.embeddings], dtype=np.float32)
            if not np.isfinite(vecs).all():
                non_finite += 1
            elif vecs.shape != (len(texts), DIMENSIONS) or np.abs(vecs - expected(texts)).max() > 1e-5:
                mixed_up += 1
        return {"lost": lost, "duplicated": duplicated, "mixed_up": mixed_up, "non_finite": non_finite}


def score(
    scenario: str,
    cluster: Cluster,
    counts: dict[str, int],
    recovery_s: float,
    settle_s: float = 20,
    **extra: object,
) -> dict[str, object]:
    """Wait for the pending entries to drain, print and record the scorecard line, and
    assert the guarantees: nothing lost, duplicated, mixed up or non-finite, nothing
    left pending, no key left behind forever."""
    try:
        wait_until(lambda: cluster.pending() == 0, settle_s, what="pending entries to drain")
    except AssertionError:
        pass
    card: dict[str, object] = dict(counts)
    card.update(
        recovery_s=round(recovery_s, 2),
        pending=cluster.pending(),
        leftover_keys=len(cluster.leftover_keys()),
        **extra,
    )
    line = f"SCORECARD {scenario}: " + " ".join(f"{k}={v}" for k, v in card.items()).replace(" ", " ")
    print(line)
    SCORECARDS.append(line)
    SCORE_FILE.parent.mkdir(exist_ok=True)
    with SCORE_FILE.open("a") as out:
        out.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {socket.gethostname()} {line}\n")
    for name in ("lost", "duplicated", "mixed_up", "non_finite", "pending", "leftover_keys"):
        assert card[name] == 0, f"{line} (leftover: {cluster.leftover_keys()})"
    return card
