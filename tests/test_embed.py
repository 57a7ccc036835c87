"""Unary Embed, ListModels, health and reflection against the running service."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from embedstream.v1 import embedder_pb2 as pb
from embedstream.workers.debug import debug_vectors
from tests.conftest import Service
from tests.support.processes import entries_added, stub

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Embedding models turn text into vectors.",
    "Redis streams hold the queue between the gateway and the workers.",
    "short",
    "A considerably longer sentence that goes on and on about batching by token budget, sorted by "
    "length, so that padding stays small and the model spends its time on real tokens.",
]


def request(texts: list[str], **kw: object) -> pb.EmbedRequest:
    return pb.EmbedRequest(inputs=[pb.Input(text=t) for t in texts], **kw)  # type: ignore[arg-type]


def vectors(resp: pb.EmbedResponse) -> np.ndarray:
    return np.array([list(e.values) for e in resp.embeddings], dtype=np.float32)


def test_embed_equals_sentence_transformers(service: Service, reference: object) -> None:
    with stub(service.port) as s:
        resp = s.Embed(request(TEXTS, request_id="r-1"), timeout=30)
    expected = reference.encode(TEXTS)  # type: ignore[attr-defined]
    got = vectors(resp)
    assert resp.request_id == "r-1"
    assert resp.model == "all-MiniLM-L6-v2"
    assert resp.dimensions == 384 and got.shape == (5, 384)
    assert np.abs(got - expected).max() <= 1e-4
    assert resp.metadata.tokens > len(TEXTS) * 2
    assert resp.metadata.worker and resp.metadata.inference_ms > 0


def test_alias_packed_and_unnormalized(service: Service, reference: object) -> None:
    with stub(service.port) as s:
        packed = s.Embed(request(TEXTS[:2], model="minilm", encoding=pb.VECTOR_ENCODING_PACKED_F32LE), timeout=30)
        raw = s.Embed(request(TEXTS[:2], normalize=False), timeout=30)
    unpacked = np.stack([np.frombuffer(e.packed, dtype="<f4") for e in packed.embeddings])
    assert not packed.embeddings[0].values
    expected = reference.encode(TEXTS[:2])  # type: ignore[attr-defined]
    assert np.abs(unpacked - expected).max() <= 1e-4
    from sentence_transformers import SentenceTransformer

    # The Normalize module is part of the model; normalize=false skips it.
    pooling_only = SentenceTransformer(modules=[reference[0], reference[1]], device="cpu")  # type: ignore[index]
    pooled = pooling_only.encode(TEXTS[:2])
    got = vectors(raw)
    assert np.linalg.norm(got, axis=1).min() > 1.5  # really not normalized
    assert np.abs(got - pooled).max() <= 1e-4


def test_truncation_reported(service: Service, reference: object) -> None:
    long_text = "tokens " * 400
    with stub(service.port) as s:
        resp = s.Embed(request([long_text]), timeout=30)
    assert resp.metadata.truncated_inputs == 1
    assert np.abs(vectors(resp) - reference.encode([long_text])).max() <= 1e-4  # type: ignore[attr-defined]


def test_debug_model_vectors(service: Service) -> None:
    texts = [f"text {i}" for i in range(20)]
    with stub(service.port) as s:
        resp = s.Embed(request(texts, model="debug"), timeout=10)
    assert np.abs(vectors(resp) - debug_vectors(texts, 64, [True] * 20)).max() <= 1e-6


@pytest.mark.parametrize(
    ("req", "code", "field"),
    [
        (request(["x"], model="no-such-model"), grpc.StatusCode.NOT_FOUND, "no-such-model"),
        (pb.EmbedRequest(), grpc.StatusCode.INVALID_ARGUMENT, "inputs"),
        (request(["fine", ""]), grpc.StatusCode.INVALID_ARGUMENT, "inputs[1].text"),
        (request(["   \n"]), grpc.StatusCode.INVALID_ARGUMENT, "inputs[0].text"),
        (request(["a"] * 257), grpc.StatusCode.INVALID_ARGUMENT, "inputs: 257 inputs exceed"),
        (request(["x" * 70000]), grpc.StatusCode.INVALID_ARGUMENT, "inputs[0].text: 70000 bytes"),
        (request(["ok", "word " * 300], truncate=False), grpc.StatusCode.INVALID_ARGUMENT, "inputs[1].text"),
        (pb.EmbedRequest(inputs=[pb.Input(image=b"\x89PNG")]), grpc.StatusCode.INVALID_ARGUMENT, "inputs[0].image"),
        (pb.EmbedRequest(inputs=[pb.Input()]), grpc.StatusCode.INVALID_ARGUMENT, "inputs[0]"),
    ],
)
def test_bad_input_is_refused_before_queueing(
    service: Service, r: redis.Redis, req: pb.EmbedRequest, code: grpc.StatusCode, field: str
) -> None:
    before = entries_added(r, "all-MiniLM-L6-v2")
    with stub(service.port) as s, pytest.raises(grpc.RpcError) as err:
        s.Embed(req, timeout=10)
    assert err.value.code() == code
    assert field in err.value.details()
    assert entries_added(r, "all-MiniLM-L6-v2") == before


def test_too_long_after_tokenizing_is_refused_by_the_worker(service: Service) -> None:
    # Few words but many tokens: passes the gateway's word bound, the worker refuses it.
    text = " ".join(["supercalifragilisticexpialidocious"] * 100)
    with stub(service.port) as s, pytest.raises(grpc.RpcError) as err:
        s.Embed(request(["fine", text], truncate=False), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs[1].text" in err.value.details() and "256 tokens" in err.value.details()


def test_deadline_exceeded(service: Service) -> None:
    with stub(service.port) as s, pytest.raises(grpc.RpcError) as err:
        s.Embed(request(["x"], model="slow"), timeout=0.1)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_queue_full_is_resource_exhausted(service: Service) -> None:
    with stub(service.port) as s:
        futures = [s.Embed.future(request([f"t{i}"], model="slow"), timeout=30) for i in range(12)]
        codes = [f.code() for f in futures]  # each waits for its call to end
        for f in futures:
            if f.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                assert "slow" in f.details() and "retry" in f.details()
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    assert grpc.StatusCode.OK in codes
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}


def test_no_live_worker_is_unavailable(service: Service) -> None:
    started = time.monotonic()
    with stub(service.port) as s, pytest.raises(grpc.RpcError) as err:
        s.Embed(request(["x"], model="orphan"), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "orphan" in err.value.details()
    assert time.monotonic() - started < 2


def test_list_models(service: Service) -> None:
    with stub(service.port) as s:
        models = {m.name: m for m in s.ListModels(pb.ListModelsRequest(), timeout=5).models}
    minilm = models["all-MiniLM-L6-v2"]
    assert minilm.family == pb.MODEL_FAMILY_TEXT_DENSE
    assert (minilm.dimensions, minilm.max_input_tokens) == (384, 256)
    assert minilm.serving and minilm.workers >= 1 and minilm.is_default and minilm.normalizes
    assert list(minilm.aliases) == ["minilm"]
    assert models["debug"].family == pb.MODEL_FAMILY_DEBUG and models["debug"].dimensions == 64
    assert not models["orphan"].serving and models["orphan"].workers == 0


def test_health_overall_and_per_model(service: Service) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = {
            name: health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
            for name in ("", "embedstream.v1.Embedder", "all-MiniLM-L6-v2", "orphan")
        }
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    assert status == {
        "": serving,
        "embedstream.v1.Embedder": serving,
        "all-MiniLM-L6-v2": serving,
        "orphan": not_serving,
    }


def test_reflection_lists_services(service: Service) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = list(reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"embedstream.v1.Embedder", "grpc.health.v1.Health"} <= names
