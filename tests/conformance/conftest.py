"""The conformance suite's fixtures: the tiny family models (built once per session) and a
served registry per test module (one gateway, one worker per model, the session's Redis)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest
import redis

from embedstream.redis_server import RedisServer
from embedstream.v1 import embedder_pb2_grpc as pb_grpc
from tests.support.conformance import FamilyModels, Served, registry_toml
from tests.support.processes import Proc, base_env, start_gateway, start_workers, wait_until


@pytest.fixture(scope="session")
def family_models(tmp_path_factory: pytest.TempPathFactory) -> FamilyModels:
    return FamilyModels(tmp_path_factory.mktemp("family-models"))


@pytest.fixture(scope="module")
def serve(
    redis_server: RedisServer, r: redis.Redis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Served]]:
    """``serve(models, start=[...])``: a gateway for the registry ``models`` and workers for ``start``
    (default: all), returned once every one serves; stopped when the module ends."""
    running: list[Proc] = []
    channels: list[grpc.Channel] = []

    def start(models: dict[str, dict[str, object]], start: list[str] | None = None) -> Served:
        folder = tmp_path_factory.mktemp("conformance")
        path = folder / "models.toml"
        path.write_text(registry_toml(models))
        env = base_env(redis_server.url, path, EMBEDSTREAM_THREADS="1")
        gateway, port = start_gateway(env, folder)
        running.append(gateway)
        names = list(models) if start is None else start
        workers = start_workers(env, folder, names, r) if names else {}
        running.extend(workers.values())
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        channels.append(channel)
        served = Served(port, env, gateway, workers, pb_grpc.EmbedderStub(channel), path, folder)
        wait_until(lambda: all(served.models()[n].serving for n in names), 15, what="models serving")
        return served

    yield start
    for channel in channels:
        channel.close()
    for proc in running:
        proc.stop()
