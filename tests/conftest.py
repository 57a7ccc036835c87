"""Session fixtures: a real redis-server on a free port, the real model, real processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from embedstream.redis_server import RedisServer
from tests.support.models import MINILM, REGISTRY
from tests.support.processes import Proc, base_env, start_gateway, start_workers

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The onnx engine's graphs for this run (every process inherits it), with MiniLM's exported up front:
    workers then start as fast as with torch, and nothing lands in the user's ~/.cache."""
    from embedstream.registry import builtin
    from embedstream.workers import onnxengine

    folder = tmp_path_factory.mktemp("onnx")
    os.environ["EMBEDSTREAM_ONNX_CACHE"] = str(folder)
    onnxengine.graph(builtin().resolve(""), str(folder))
    return folder


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server for the whole session, or the one EMBEDSTREAM_TEST_REDIS_URL names."""
    server = RedisServer(tmp_path_factory.mktemp("redis"), appendonly=False).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def registry_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("registry") / "models.toml"
    path.write_text(REGISTRY)
    return path


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@dataclass
class Service:
    """A running gateway with workers for minilm, debug and slow."""

    port: int
    env: dict[str, str]
    gateway: Proc
    workers: dict[str, Proc]


@pytest.fixture(scope="session")
def service(redis_server: RedisServer, r: redis.Redis, registry_file: Path, log_dir: Path) -> Iterator[Service]:
    env = base_env(redis_server.url, registry_file, EMBEDSTREAM_THREADS="1", EMBEDSTREAM_VISIBILITY_TIMEOUT_S="5")
    gateway, port = start_gateway(env, log_dir)
    try:
        workers = start_workers(env, log_dir, ["all-MiniLM-L6-v2", "debug", "slow", "jobslow"], r)
    except BaseException:
        gateway.kill()
        raise
    yield Service(port, env, gateway, workers)
    for proc in [gateway, *workers.values()]:
        proc.stop()


@pytest.fixture(scope="session")
def reference() -> object:
    """The reference library's model: sentence-transformers on the same folder."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(MINILM, device="cpu")
