"""The embedding cache's test service: a gateway and one worker per model with the cache on, each
worker with its own /metrics port, so a test reads the model's call counter and the cache's."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import redis

from embedstream import keys
from embedstream.redis_server import free_port
from embedstream.v1 import embedder_pb2 as pb
from tests.support.models import MINILM
from tests.support.processes import Proc, scrape, stub, wait_until, wait_worker

#: A budget of a few debug records, so that eviction runs (``cbudget``'s worker).
SMALL_BUDGET = 3000


def registry(splade: Path, colbert: Path) -> str:
    """The models of the cache tests; names of their own, so no other worker serves their streams."""
    return f"""
default = "cmini"

[models.cmini]
family = "text-dense"
path = "{MINILM}"

[models.cdebug]
family = "debug"
dimensions = 64
matryoshka_dimensions = [32]

[models.cbudget]
family = "debug"
dimensions = 64

[models.cnowrite]
family = "debug"
dimensions = 16

[models.csplade]
family = "sparse"
path = "{splade}"

[models.ccolbert]
family = "multi-vector"
path = "{colbert}"
"""


@dataclass
class Cached:
    """The running service and what the tests read of it."""

    port: int
    env: dict[str, str]
    r: redis.Redis
    logs: Path
    gateway: Proc
    workers: dict[str, Proc] = field(default_factory=dict)
    #: The /metrics port of each model's worker.
    metrics: dict[str, int] = field(default_factory=dict)

    def start(self, models: list[str], **env: str) -> None:
        """Workers for ``models`` (started together), each with a /metrics port of its own."""
        procs = {}
        for model in models:
            self.metrics[model] = free_port()
            run = dict(self.env, EMBEDSTREAM_METRICS_PORT=str(self.metrics[model]), **env)
            procs[model] = Proc(f"worker-{model}", ["worker", "--model", model], run, self.logs)
        for model, proc in procs.items():
            self.workers[model] = wait_worker(proc, model, self.r, 120)

    def restart(self, model: str) -> None:
        """Stop the model's worker and start a new process in its place; returns once the gateway
        sees it (it refreshes its view of the workers twice a second)."""
        self.workers.pop(model).stop()
        self.start([model])
        with stub(self.port) as s:

            def serving() -> bool:
                found = s.ListModels(pb.ListModelsRequest(), timeout=10).models
                return any(m.name == model and m.serving for m in found)

            wait_until(serving, 10, what=f"the gateway to see {model}'s new worker")

    def metric(self, model: str, name: str, **labels: str) -> float:
        """One series of the model's worker (0 when absent)."""
        shown = ",".join(f'{k}="{v}"' for k, v in {"model": model, **labels}.items())
        return scrape(self.metrics[model]).get(f"{name}{{{shown}}}", 0.0)

    def calls(self, model: str) -> float:
        """Batches the model's forward pass ran: the model's call counter."""
        return self.metric(model, "embedstream_batch_inputs_count")

    def records(self, model: str) -> set[bytes]:
        """The model's cache records in Redis."""
        return set(self.r.scan_iter(keys.cache_record(model, "*"), count=1000))

    def stored(self, model: str, count: int) -> set[bytes]:
        """The model's records once there are ``count``: a worker writes them after the answer."""
        wait_until(lambda: len(self.records(model)) >= count, 10, what=f"{count} cache records of {model}")
        return self.records(model)

    def stop(self) -> None:
        for proc in [self.gateway, *self.workers.values()]:
            proc.stop()
