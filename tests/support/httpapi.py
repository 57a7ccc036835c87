"""What the HTTP API tests share: the gateway they call (``Api``), its texts and models, an OpenAI SDK client on it."""

from __future__ import annotations

import socket
from dataclasses import dataclass

import grpc
import numpy as np
import openai
import redis

from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc
from tests.support import ROOT
from tests.support.http import Response, call
from tests.support.processes import entries_added

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Embedding models turn text into vectors.",
    "Redis streams hold the queue between the gateway and the workers.",
    "short",
]
DOCS = ["Redis is an in-memory data store.", "Cats sleep a lot.", "Streams are append-only logs."]
NODE_DIR = ROOT / "examples" / "node"
MODELS = ("all-MiniLM-L6-v2", "rerank", "sentiment", "slow", "orphan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Api:
    """A gateway with API keys (tenants acme, unlimited, and tight, 1 input per 100 s) and its workers."""

    url: str
    grpc_port: int
    metrics_port: int
    key: str
    tight_key: str
    admin: redis.Redis
    env: dict[str, str]

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    def post(self, path: str, body: object, key: str | None = None, **headers: str) -> Response:
        return call("POST", self.url + path, body, {**self.headers(key), **headers})

    def embed(self, texts: list[str], **kw: object) -> pb.EmbedResponse:
        with grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
            request = pb.EmbedRequest(inputs=[pb.Input(text=t) for t in texts], **kw)  # type: ignore[arg-type]
            return pb_grpc.EmbedderStub(channel).Embed(request, metadata=[("authorization", f"Bearer {self.key}")])

    def rerank(self, **kw: object) -> pb.RerankResponse:
        with grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
            request = pb.RerankRequest(**kw)  # type: ignore[arg-type]
            return pb_grpc.EmbedderStub(channel).Rerank(request, metadata=[("authorization", f"Bearer {self.key}")])

    def added(self) -> dict[str, int]:
        return {model: entries_added(self.admin, model) for model in MODELS}


def sdk(api: Api, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=api.url + "/v1", api_key=key or api.key, max_retries=0, timeout=60)


def floats(response: pb.EmbedResponse) -> np.ndarray:
    return np.array([list(e.values) for e in response.embeddings], dtype=np.float32)
