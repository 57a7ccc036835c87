"""What the token tests share: the served gateway (``Text``), its texts and models, token-id inputs,
embeds and refusals."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import redis

from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc
from tests.support.corpora import texts as corpus
from tests.support.http import Response, call
from tests.support.processes import entries_added

TEXTS = ["Hello world, tokenizers!", "naïve café — 東京 and emoji 🙂", "short", "Redis streams hold the queue."]
LONG = " ".join(corpus(60))  # ~700 words: far over MiniLM's 256 tokens
MODELS = ("tk-minilm", "tk-rerank", "tk-clip", "tk-debug")
LEFT = pb.TRUNCATION_SIDE_LEFT


@dataclass
class Text:
    """A gateway (gRPC and HTTP) with MiniLM, a tiny cross-encoder, a tiny open_clip and a debug model."""

    stub: pb_grpc.EmbedderStub
    port: int
    url: str
    admin: redis.Redis
    rerank_folder: Path

    def post(self, path: str, body: object) -> Response:
        return call("POST", self.url + path, body)

    def added(self) -> dict[str, int]:
        return {model: entries_added(self.admin, model) for model in MODELS}


def embed(stub: pb_grpc.EmbedderStub, items: list[pb.Input], **kw: Any) -> np.ndarray:
    response = stub.Embed(pb.EmbedRequest(model="tk-minilm", inputs=items, **kw), timeout=60)
    return np.array([list(e.values) for e in response.embeddings], dtype=np.float32)


def ids_input(ids: list[int]) -> pb.Input:
    return pb.Input(tokens=pb.TokenIds(ids=ids))


def refused(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value
