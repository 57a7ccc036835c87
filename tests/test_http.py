"""The HTTP API against a real gateway, Redis and workers: the official OpenAI SDK, raw JSON,
rerank, and every error status (400, 401, 404, 413, 429, 503, 504) with nothing enqueued."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import openai
import pytest
import redis

from embedstream import apikeys
from embedstream.redis_server import RedisServer
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc
from tests.support import ROOT, tinymodels
from tests.support.documents import blocks
from tests.support.http import Response, call, http_port
from tests.support.models import MINILM
from tests.support.processes import base_env, entries_added, scrape, start_gateway, start_workers

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


@pytest.fixture(scope="module")
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


def sdk(api: Api, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=api.url + "/v1", api_key=key or api.key, max_retries=0, timeout=60)


def floats(response: pb.EmbedResponse) -> np.ndarray:
    return np.array([list(e.values) for e in response.embeddings], dtype=np.float32)


# -- the official OpenAI SDK ----------------------------------------------------------------------


def test_the_openai_sdk_gets_embeds_vectors_as_float_base64_and_dimensions(api: Api) -> None:
    expected = api.embed(TEXTS)
    with sdk(api) as client:
        as_float = client.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS, encoding_format="float")
        as_base64 = client.embeddings.create(model="minilm", input=TEXTS, encoding_format="base64")
        default = client.embeddings.create(model="text-embedding-3-small", input=TEXTS)  # the SDK asks for base64
        one = client.embeddings.create(model="minilm", input=TEXTS[0])
        cut = client.embeddings.create(model="minilm", input=TEXTS, dimensions=128)
    want = floats(expected)
    got_float = np.array([d.embedding for d in as_float.data], dtype=np.float32)
    got_b64 = np.stack([np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in as_base64.data])  # type: ignore[arg-type]
    got_default = np.array([d.embedding for d in default.data], dtype=np.float32)
    assert got_float.shape == (4, 384)
    assert np.abs(got_float - want).max() <= 1e-6
    assert np.array_equal(got_b64, want)  # the same bytes the worker produced
    assert np.array_equal(got_default, want)
    assert np.abs(np.array(one.data[0].embedding, dtype=np.float32) - want[0]).max() <= 1e-6
    assert [d.index for d in as_float.data] == [0, 1, 2, 3]
    assert as_float.model == default.model == "all-MiniLM-L6-v2"
    assert as_float.usage.prompt_tokens == as_float.usage.total_tokens == expected.metadata.tokens
    want_cut = floats(api.embed(TEXTS, dimensions=128))
    got_cut = np.array([d.embedding for d in cut.data], dtype=np.float32)
    assert got_cut.shape == (4, 128) and np.abs(got_cut - want_cut).max() <= 1e-6


def test_the_openai_sdk_lists_and_retrieves_models(api: Api) -> None:
    with sdk(api) as client:
        listed = {m.id: m for m in client.models.list()}
        by_alias = client.models.retrieve("minilm")
        with pytest.raises(openai.NotFoundError) as missing:
            client.models.retrieve("no-such-model")
    assert set(listed) == set(MODELS)
    assert by_alias.id == "all-MiniLM-L6-v2" and by_alias.object == "model"
    extra = by_alias.model_extra or {}
    assert extra["dimensions"] == 384 and extra["serving"] is True and "minilm" in extra["aliases"]
    assert "no-such-model" in str(missing.value)


def test_the_openai_sdk_raises_its_own_errors(api: Api) -> None:
    with sdk(api, key="es_wrong") as client, pytest.raises(openai.AuthenticationError):
        client.embeddings.create(model="minilm", input="hello")
    with sdk(api) as client:
        with pytest.raises(openai.BadRequestError) as bad:
            client.embeddings.create(model="minilm", input=["fine", " "])
        with pytest.raises(openai.NotFoundError):
            client.embeddings.create(model="gpt-5", input="hello")
    assert bad.value.status_code == 400
    body = bad.value.body
    assert isinstance(body, dict) and body["param"] == "input[1]" and body["code"] == "invalid_argument"


def test_the_openai_npm_package_gets_embeds_vectors(api: Api, tmp_path: Path) -> None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are required: `make deps` installs them from Debian's packages")
    if not (NODE_DIR / "node_modules" / "openai").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, capture_output=True)
    (tmp_path / "corpus.txt").write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "vectors.json"
    args = ["--base-url", api.url + "/v1", "--texts", str(tmp_path / "corpus.txt"), "--out", str(out)]
    env = dict(os.environ, EMBEDSTREAM_API_KEY=api.key)
    result = subprocess.run(
        [node, "openai.js", *args, "--dimensions", "128"], cwd=NODE_DIR, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    got = json.loads(out.read_text())
    want = floats(api.embed(TEXTS))
    assert np.abs(np.array(got["float"], dtype=np.float32) - want).max() <= 1e-6
    assert np.array_equal(np.array(got["base64"], dtype=np.float32), want)
    cut = np.array(got["dimensions"], dtype=np.float32)
    assert cut.shape == (4, 128) and np.abs(cut - floats(api.embed(TEXTS, dimensions=128))).max() <= 1e-6


# -- our extensions, raw JSON -------------------------------------------------------------------


def test_extension_fields_match_embed(api: Api) -> None:
    raw = api.post("/v1/embeddings", {"input": TEXTS[:2], "normalize": False, "truncate": True}).json()
    want = floats(api.embed(TEXTS[:2], normalize=False))
    assert np.abs(np.array([d["embedding"] for d in raw["data"]]) - want).max() <= 1e-6
    quantized = api.post("/v1/embeddings", {"input": TEXTS[:2], "output_type": "int8"}).json()
    want_int8 = [list(e.int_values) for e in api.embed(TEXTS[:2], output_type=pb.OUTPUT_TYPE_INT8).embeddings]
    assert [d["embedding"] for d in quantized["data"]] == want_int8
    packed = api.post("/v1/embeddings", {"input": TEXTS[:1], "output_type": "int8", "encoding_format": "base64"})
    assert list(np.frombuffer(base64.b64decode(packed.json()["data"][0]["embedding"]), np.int8)) == want_int8[0]
    query = api.post("/v1/embeddings", {"input": "what is redis?", "input_type": "query", "user": "u-1"})
    assert query.status_code == 200, query.text


# -- rerank -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank"])
def test_rerank_in_cohere_and_jina_shape_equals_the_grpc_rerank(api: Api, path: str) -> None:
    expected = api.rerank(model="rerank", query="what is redis?", documents=DOCS)
    body = {"model": "rerank", "query": "what is redis?", "documents": DOCS, "top_n": 2, "return_documents": True}
    got = api.post(path, body).json()
    assert [r["index"] for r in got["results"]] == [r.index for r in expected.results][:2]
    for result, want in zip(got["results"], expected.results):
        assert result["relevance_score"] == pytest.approx(want.score, abs=1e-6)
        assert result["document"] == {"text": DOCS[want.index]}
    assert got["model"] == "rerank" and got["usage"]["total_tokens"] > 0
    objects = api.post(path, {"model": "rerank", "query": "what is redis?", "documents": [{"text": d} for d in DOCS]})
    assert [r["index"] for r in objects.json()["results"]] == [r.index for r in expected.results]
    assert "document" not in objects.json()["results"][0]


# -- errors -------------------------------------------------------------------------------------

BAD = [
    ({}, "input"),
    ({"input": ""}, "input[0]"),
    ({"input": ["ok", "   "]}, "input[1]"),
    ({"input": []}, "input"),
    ({"input": 42}, "input"),
    ({"input": ["ok", 7]}, "input[1]"),
    ({"input": [[101, 2023, 99999]]}, "input[0]"),
    ({"input": [101, -1]}, "input"),
    ({"input": [[101, 102], "text"]}, "input[1]"),
    ({"input": [[]]}, "input[0]"),
    ({"input": "x", "truncation_side": "middle"}, "truncation_side"),
    ({"input": "x", "model": 3}, "model"),
    ({"input": "x", "encoding_format": "hex"}, "encoding_format"),
    ({"input": "x", "dimensions": 100}, "dimensions"),
    ({"input": "x", "dimensions": "128"}, "dimensions"),
    ({"input": "x", "output_type": "float64"}, "output_type"),
    ({"input": "x", "input_type": "passage"}, "input_type"),
    ({"input": "x", "prompt_name": "query"}, "prompt_name"),
    ({"input": "x", "normalize": "yes"}, "normalize"),
    ({"input": "x", "model": "rerank"}, "model"),
    ({"input": "x", "model": "slow", "dimensions": 4}, "dimensions"),
]


@pytest.mark.parametrize(("body", "param"), BAD, ids=[json.dumps(b)[:40] for b, _ in BAD])
def test_bad_embeddings_requests_are_400_naming_the_field_and_enqueue_nothing(
    api: Api, body: dict[str, object], param: str
) -> None:
    before = api.added()
    response = api.post("/v1/embeddings", body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"].startswith(f"{param}: ")
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_argument"
    assert api.added() == before


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "rerank", "documents": DOCS}, "query"),
        ({"model": "rerank", "query": "q"}, "documents"),
        ({"model": "rerank", "query": "q", "documents": ["a", ""]}, "documents[1]"),
        ({"model": "rerank", "query": "q", "documents": ["a", 5]}, "documents[1]"),
        ({"model": "rerank", "query": "q", "documents": DOCS, "top_n": -1}, "top_n"),
        ({"model": "all-MiniLM-L6-v2", "query": "q", "documents": DOCS}, "model"),
    ],
)
def test_bad_rerank_requests_are_400_naming_the_field(api: Api, body: dict[str, object], param: str) -> None:
    before = api.added()
    response = api.post("/v1/rerank", body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert api.added() == before


def test_a_body_that_is_not_a_json_object_is_400(api: Api) -> None:
    for content in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        response = api.post("/v1/embeddings", content)
        assert response.status_code == 400 and response.json()["error"]["param"] == "body", content


@pytest.mark.parametrize(
    "authorization",
    [None, "Basic dXNlcjpwYXNz", "Bearer", "Bearer es_not_a_key"],
    ids=["none", "basic", "empty", "wrong"],
)
def test_a_missing_malformed_or_unknown_key_is_401_and_enqueues_nothing(api: Api, authorization: str | None) -> None:
    before = api.added()
    headers = {} if authorization is None else {"Authorization": authorization}
    routes = ("/v1/embeddings", "/v1/rerank", "/tokenize", "/decode", "/classify", "/predict")
    for method, path in (("GET", "/v1/models"), *(("POST", route) for route in routes)):
        body = {"input": "x", "inputs": "x", "ids": [101]} if method == "POST" else None
        response = call(method, api.url + path, body, headers)
        assert response.status_code == 401, (path, response.text)
        error = response.json()["error"]
        assert error["type"] == "authentication_error" and "es_not_a_key" not in error["message"]
    assert api.added() == before
    assert call("GET", api.url + "/health").status_code == 200  # probes need no key


def test_an_unknown_model_is_404(api: Api) -> None:
    before = api.added()
    response = api.post("/v1/embeddings", {"input": "x", "model": "gpt-5"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert api.post("/v1/rerank", {"model": "nope", "query": "q", "documents": DOCS}).status_code == 404
    assert api.added() == before


def test_too_many_inputs_too_long_a_text_or_too_big_a_body_is_413(api: Api) -> None:
    before = api.added()
    many = api.post("/v1/embeddings", {"input": ["x"] * 9})
    long = api.post("/v1/embeddings", {"input": ["x", "y" * 5000]})
    huge = api.post("/v1/embeddings", {"input": "z" * 300_000})
    for response, param in ((many, "input"), (long, "input[1]"), (huge, "body")):
        assert response.status_code == 413, response.text
        assert response.json()["error"]["param"] == param
    assert api.added() == before


def test_a_full_queue_is_429_with_retry_after(api: Api) -> None:
    def call(i: int) -> Response:
        return api.post("/v1/embeddings", {"input": f"t{i}", "model": "slow"})

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(call, range(12)))
    codes = {r.status_code for r in responses}
    assert codes == {200, 429}, codes
    for response in responses:
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1 and int(response.headers["retry-after-ms"]) >= 1
            assert "slow" in response.json()["error"]["message"]
            assert response.json()["error"]["type"] == "rate_limit_error"


def test_a_tenant_over_its_rate_limit_gets_429_with_retry_after_before_anything_is_queued(api: Api) -> None:
    first = api.post("/v1/embeddings", {"input": "one", "model": "slow"}, key=api.tight_key)
    assert first.status_code == 200, first.text
    before = api.added()
    second = api.post("/v1/embeddings", {"input": "two", "model": "slow"}, key=api.tight_key)
    assert second.status_code == 429
    assert int(second.headers["retry-after"]) >= 60  # 1 input per 100 s
    assert "rate limit" in second.json()["error"]["message"]
    assert api.added() == before


def test_a_model_without_workers_is_503_with_retry_after(api: Api) -> None:
    response = api.post("/v1/embeddings", {"input": "x", "model": "orphan"})
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert "no live worker" in response.json()["error"]["message"]
    assert response.json()["error"]["type"] == "server_error"


def test_without_redis_calls_and_health_are_503(api: Api, log_dir: Path) -> None:
    env = dict(api.env, EMBEDSTREAM_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", EMBEDSTREAM_METRICS_PORT="0")
    gateway, _ = start_gateway(env, log_dir)
    try:
        url = f"http://127.0.0.1:{http_port(gateway)}"
        response = call("POST", url + "/v1/embeddings", {"input": "x"}, api.headers())
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "Redis" in response.json()["error"]["message"]
        assert call("GET", url + "/health").status_code == 503
    finally:
        gateway.stop()


def test_a_passed_deadline_is_504(api: Api) -> None:
    response = api.post("/v1/embeddings", {"input": "x", "model": "slow"}, **{"X-Request-Timeout": "0.05"})
    assert response.status_code == 504 and response.json()["error"]["code"] == "deadline_exceeded"
    bad = api.post("/v1/embeddings", {"input": "x"}, **{"X-Request-Timeout": "soon"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] is None
    assert "X-Request-Timeout" in bad.json()["error"]["message"]


def test_unknown_paths_and_methods_get_json_errors(api: Api) -> None:
    missing = call("GET", api.url + "/v2/nothing", headers=api.headers())
    wrong = call("GET", api.url + "/v1/embeddings", headers=api.headers())
    assert missing.status_code == 404 and "error" in missing.json()
    assert wrong.status_code == 405 and "error" in wrong.json()


def test_http_calls_are_counted_by_route_and_status(api: Api) -> None:
    api.post("/v1/embeddings", {"input": "counted"})
    api.post("/v1/embeddings", {"input": ""})
    series = scrape(api.metrics_port)
    ok = 'embedstream_requests_total{code="OK",model="-",rpc="HTTP /v1/embeddings"}'
    bad = 'embedstream_requests_total{code="INVALID_ARGUMENT",model="-",rpc="HTTP /v1/embeddings"}'
    assert series[ok] >= 1 and series[bad] >= 1
    assert series['embedstream_inputs_total{model="all-MiniLM-L6-v2"}'] >= 1


# -- the docs -----------------------------------------------------------------------------------


def doc_blocks(language: str) -> list[str]:
    """The ``language`` blocks of docs/http.md (tests/test_docs.py runs them too, without keys)."""
    return [b.code for b in blocks(ROOT / "docs" / "http.md") if b.lang == language]


def test_every_command_in_the_http_docs_runs_against_a_real_gateway(api: Api) -> None:
    env = dict(os.environ, EMBEDSTREAM_API_KEY=api.key)
    host = api.url.removeprefix("http://")
    commands = doc_blocks("sh")
    assert len(commands) >= 4
    for block in commands:
        script = block.replace("localhost:8080", host)
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, capture_output=True, text=True)
        assert result.returncode == 0, (block, result.stdout, result.stderr)
        assert "error" not in json.loads(result.stdout), result.stdout
    programs = doc_blocks("python")
    assert programs
    for block in programs:
        script = block.replace("localhost:8080", host)
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 0, (block, result.stderr)


def test_every_error_code_has_an_http_status() -> None:
    from embedstream.gateway.status import HTTP_STATUS

    from embedstream.errors import Code

    assert set(HTTP_STATUS) == set(Code)


def test_long_inputs_chunk_pooled_over_http_equals_the_grpc_embed(api: Api) -> None:
    text = " ".join(TEXTS * 20)
    body = {"input": [text], "long_inputs": "chunk", "chunk_size_tokens": 64, "chunk_overlap_tokens": 8}
    got = api.post("/v1/embeddings", body).json()
    chunking = pb.ChunkOptions(size_tokens=64, overlap_tokens=8)
    want = floats(api.embed([text], long_inputs=pb.LONG_INPUTS_CHUNK, chunking=chunking))
    assert np.abs(np.array([d["embedding"] for d in got["data"]]) - want).max() <= 1e-6
    refused = api.post("/v1/embeddings", {"input": [text], "long_inputs": "error"})
    assert refused.status_code == 400 and "input" in refused.text
    bad = api.post("/v1/embeddings", {"input": ["x"], "long_inputs": "fold"})
    assert bad.status_code == 400 and "long_inputs" in bad.text
