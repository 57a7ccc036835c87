"""The HTTP API against a real gateway, Redis and workers: the official OpenAI SDK (Python and npm),
raw JSON, rerank in Cohere's and Jina's shapes, and every command of docs/http.md."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import openai
import pytest

from embedstream.v1 import embedder_pb2 as pb
from tests.support import ROOT
from tests.support.documents import blocks
from tests.support.httpapi import DOCS, MODELS, NODE_DIR, TEXTS, Api, floats, sdk


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


def doc_blocks(language: str) -> list[str]:
    """The ``language`` blocks of docs/http.md (tests/test_docs_run.py runs them too, without keys)."""
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
