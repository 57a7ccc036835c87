"""One family served for a test module: a registry file, a gateway and its workers, and a stub."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import redis

from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc
from tests.support.processes import base_env, start_gateway, start_workers, wait_until


@dataclass
class Served:
    """A running gateway (its port and stub) serving the registry's models."""

    port: int
    stub: pb_grpc.EmbedderStub
    channel: grpc.Channel


@contextmanager
def served(redis_url: str, r: redis.Redis, folder: Path, registry: str, models: list[str]) -> Iterator[Served]:
    """Serve ``registry`` (TOML) with one worker per name in ``models``; stops them all on exit."""
    path = folder / "models.toml"
    path.write_text(registry)
    logs = folder / "logs"
    logs.mkdir(exist_ok=True)
    env = base_env(redis_url, path, EMBEDSTREAM_THREADS="1")
    gateway, port = start_gateway(env, logs)
    workers = {}
    try:
        workers = start_workers(env, logs, models, r)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.EmbedderStub(channel)
            # The gateway refreshes its view of the workers twice a second.
            wait_until(
                lambda: all(
                    m.serving for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models if m.name in models
                ),
                10,
                what="serving",
            )
            yield Served(port, stub, channel)
    finally:
        for proc in [gateway, *workers.values()]:
            proc.stop()
