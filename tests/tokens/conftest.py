"""The token tests' gateway (gRPC and HTTP): MiniLM, a tiny cross-encoder, a tiny open_clip and a debug model,
each worker a real process, and MiniLM's own tokenizer. Package-scoped: started once for every file here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import redis
from transformers import AutoTokenizer

from embedstream.redis_server import RedisServer
from embedstream.v1 import embedder_pb2_grpc as pb_grpc
from tests.support import tinymodels
from tests.support.http import http_port
from tests.support.models import MINILM
from tests.support.processes import base_env, start_gateway, start_workers
from tests.support.tokenserved import MODELS, Text


@pytest.fixture(scope="package")
def text(redis_server: RedisServer, r: redis.Redis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Text]:
    root = tmp_path_factory.mktemp("tokenize")
    rerank = tinymodels.bert(root / "xenc", "xenc")
    registry = root / "models.toml"
    registry.write_text(f"""
default = "tk-minilm"

[models.tk-minilm]
family = "text-dense"
path = "{MINILM}"
prompts = {{ query = "query: " }}

[models.tk-rerank]
family = "rerank"
path = "{rerank}"

[models.tk-clip]
family = "image-text"
path = "{tinymodels.open_clip_model(root / "clip")}"

[models.tk-debug]
family = "debug"
dimensions = 8

[models.tk-orphan]
family = "text-dense"
path = "{MINILM}"
""")
    env = base_env(redis_server.url, registry, EMBEDSTREAM_THREADS="1", EMBEDSTREAM_MAX_INPUTS_PER_REQUEST="8")
    workers = start_workers(env, root, list(MODELS), r)
    gateway, port = start_gateway(env, root)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.EmbedderStub(channel)
    yield Text(stub, port, f"http://127.0.0.1:{http_port(gateway)}", r, rerank)
    channel.close()
    for proc in [gateway, *workers.values()]:
        proc.stop()


@pytest.fixture(scope="package")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(MINILM)
