"""One gateway and a worker per model with the embedding cache on, for the whole package."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from embedstream.redis_server import RedisServer
from tests.support import tinymodels
from tests.support.cached import Cached, registry
from tests.support.processes import base_env, start_gateway

#: Every model but cnowrite, whose worker runs as a Redis user that may not write the cache.
MODELS = ["cmini", "cdebug", "csplade", "ccolbert"]


@pytest.fixture(scope="package")
def cached(redis_server: RedisServer, r: redis.Redis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cached]:
    root = tmp_path_factory.mktemp("cache")
    models, _ = tinymodels.sparse_and_colbert(root)
    path = root / "models.toml"
    path.write_text(registry(models["splade"], models["colbert"]))
    logs = tmp_path_factory.mktemp("cache-logs")
    env = base_env(redis_server.url, path, EMBEDSTREAM_THREADS="1")
    env["EMBEDSTREAM_CACHE_BYTES"] = str(64 << 20)
    gateway, port = start_gateway(env, logs)
    service = Cached(port, env, r, logs, gateway)
    try:
        service.start(MODELS)
        yield service
    finally:
        service.stop()
