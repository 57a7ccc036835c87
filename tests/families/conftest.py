"""One gateway and one worker per family for the whole package: started once, stopped after its last test."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
import redis

from embedstream.redis_server import RedisServer
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc
from tests.support import tinymodels
from tests.support.families import MODELS, Families, registry
from tests.support.processes import base_env, start_gateway, start_workers, wait_until


@pytest.fixture(scope="package")
def families(redis_server: RedisServer, r: redis.Redis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Families]:
    root = tmp_path_factory.mktemp("tiny")
    models = tinymodels.build_all(root)
    path = root / "models.toml"
    path.write_text(registry(models))
    logs = tmp_path_factory.mktemp("family-logs")
    env = base_env(redis_server.url, path, EMBEDSTREAM_THREADS="1")
    gateway, port = start_gateway(env, logs)
    workers = start_workers(env, logs, MODELS, r)
    yield Families(port, models, workers, gateway)
    for proc in [gateway, *workers.values()]:
        proc.stop()


@pytest.fixture(scope="package")
def stub(families: Families) -> Iterator[pb_grpc.EmbedderStub]:
    with grpc.insecure_channel(f"127.0.0.1:{families.port}") as channel:
        s = pb_grpc.EmbedderStub(channel)
        # The gateway refreshes its view of the workers twice a second.
        wait_until(
            lambda: all(m.serving for m in s.ListModels(pb.ListModelsRequest(), timeout=10).models), 10, what="serving"
        )
        yield s
