"""The media tests' gateway: a tiny open_clip (video), a tiny CLAP (audio) and a debug model, each worker a real
process. Package-scoped: started once for every file here, stopped after the last."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
import redis

from embedstream.redis_server import RedisServer
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc
from tests.support import tinymodels
from tests.support.conformance import registry_toml
from tests.support.mediaserved import Media
from tests.support.processes import base_env, start_gateway, start_workers, wait_until


@pytest.fixture(scope="package")
def served(redis_server: RedisServer, r: redis.Redis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Media]:
    root = tmp_path_factory.mktemp("media-models")
    models = {"clip": tinymodels.open_clip_model(root / "clip"), "clap": tinymodels.clap_model(root / "clap")}
    registry = root / "models.toml"
    entries = {
        "clip": {"family": "image-text", "path": str(models["clip"])},
        "clap": {"family": "audio-text", "path": str(models["clap"])},
        "words": {"family": "debug", "dimensions": 8},
    }
    registry.write_text('default = "clip"\n' + registry_toml(entries))
    logs = tmp_path_factory.mktemp("media-logs")
    env = base_env(redis_server.url, registry, EMBEDSTREAM_THREADS="1", EMBEDSTREAM_MAX_MEDIA_FRAMES="64")
    gateway, port = start_gateway(env, logs)
    try:
        workers = start_workers(env, logs, ["clip", "clap", "words"], r)
    except BaseException:
        gateway.kill()
        raise
    yield Media(port, models, workers, gateway)
    for proc in [gateway, *workers.values()]:
        proc.stop()


@pytest.fixture(scope="package")
def stub(served: Media) -> Iterator[pb_grpc.EmbedderStub]:
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        s = pb_grpc.EmbedderStub(channel)
        wait_until(lambda: all(m.serving for m in s.ListModels(pb.ListModelsRequest()).models), 10, what="serving")
        yield s
