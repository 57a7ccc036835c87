"""The HTTP API tests' gateway: API keys (tenants acme and tight), MiniLM, a cross-encoder, a classifier and
debug models, each worker a real process. Package-scoped: started once for every file here, stopped after the last."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from embedstream import apikeys
from embedstream.redis_server import RedisServer
from tests.support import tinymodels
from tests.support.http import http_port
from tests.support.httpapi import Api, free_port
from tests.support.models import MINILM
from tests.support.processes import base_env, start_gateway, start_workers


@pytest.fixture(scope="package")
def api(tmp_path_factory: pytest.TempPathFactory, log_dir: Path) -> Iterator[Api]:
    root = tmp_path_factory.mktemp("http")
    server = RedisServer(root / "redis", appendonly=False).start()
    admin = redis.Redis.from_url(server.url)
    rerank = tinymodels.bert(root / "xenc", "xenc")
    sentiment = tinymodels.classifier(root / "sentiment", ["negative", "neutral", "positive"])
    registry = root / "models.toml"
    registry.write_text(f"""
default = "all-MiniLM-L6-v2"

[models."all-MiniLM-L6-v2"]
family = "text-dense"
path = "{MINILM}"
aliases = ["minilm", "text-embedding-3-small"]
matryoshka_dimensions = [256, 128]

[models.rerank]
family = "rerank"
path = "{rerank}"

[models.sentiment]
family = "classify"
path = "{sentiment}"

[models.slow]
family = "debug"
dimensions = 8
latency_ms = 300
max_batch_size = 1
max_queue_entries = 2

[models.orphan]
family = "debug"
dimensions = 8
""")
    key, tight = apikeys.new_key(), apikeys.new_key()
    entries = f"acme {apikeys.digest(key)}; tight {apikeys.digest(tight)} rate=0.01 burst=1"
    metrics_port = free_port()
    env = base_env(
        server.url,
        registry,
        EMBEDSTREAM_API_KEYS=entries,
        EMBEDSTREAM_THREADS="1",
        EMBEDSTREAM_MAX_INPUTS_PER_REQUEST="8",
        EMBEDSTREAM_MAX_TEXT_BYTES="4096",
    )
    workers = start_workers(env, log_dir, ["all-MiniLM-L6-v2", "rerank", "sentiment", "slow"], admin)
    gateway, port = start_gateway(dict(env, EMBEDSTREAM_METRICS_PORT=str(metrics_port)), log_dir)
    yield Api(f"http://127.0.0.1:{http_port(gateway)}", port, metrics_port, key, tight, admin, env)
    for proc in [gateway, *workers.values()]:
        proc.stop()
    admin.close()
    server.stop()
