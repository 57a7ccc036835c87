"""BGE-M3 served through gateway, Redis and worker equals FlagEmbedding's BGEM3FlagModel.

A tiny XLM-R saved as the real bge-m3 folder is (weights, ``sparse_linear.pt``,
``colbert_linear.pt``, SentencePiece tokenizer, sentence-transformers files);
requests choose dense, sparse and multi-vector outputs, one or several.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import redis

from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import jobs_pb2 as jpb
from embedstream.v1 import jobs_pb2_grpc as jpb_grpc
from tests.support import tinyheads
from tests.support.conformance import Served
from tests.support.processes import entries_added, wait_until

TEXTS = ["a photo of a cat", "Redis streams hold the queue.", "embedding models turn text into vectors, fast!"]
ALL = [pb.VECTOR_KIND_DENSE, pb.VECTOR_KIND_SPARSE, pb.VECTOR_KIND_MULTI_VECTOR]
TOL = 1e-4


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tinyheads.bge_m3(tmp_path_factory.mktemp("bge-m3") / "bge-m3")


@pytest.fixture(scope="module")
def service(serve: Callable[..., Served], folder: Path) -> Served:
    return serve(
        {
            "bge-m3": {"family": "text-dense", "path": str(folder), "outputs": ["dense", "sparse", "multi-vector"]},
            "bge-m3-dense": {"family": "text-dense", "path": str(folder)},
        },
        start=["bge-m3"],
    )


@pytest.fixture(scope="module")
def reference(folder: Path) -> Any:
    return tinyheads.flag_m3(folder)


def expected(reference: Any, texts: list[str]) -> dict[str, Any]:
    return dict(reference.encode(texts, return_dense=True, return_sparse=True, return_colbert_vecs=True))


def embed(service: Served, texts: list[str], **options: Any) -> pb.EmbedResponse:
    request = pb.EmbedRequest(model="bge-m3", inputs=[pb.Input(text=t) for t in texts], **options)
    response: pb.EmbedResponse = service.stub.Embed(request, timeout=30)
    return response


def matrix(values: Any, packed: bytes, rows: int, width: int) -> np.ndarray:
    flat = np.frombuffer(packed, "<f4") if packed else np.array(values, dtype=np.float32)
    return flat.reshape(rows, width)


def assert_matches(resp: pb.EmbedResponse, want: dict[str, Any]) -> list[float]:
    """Max abs differences (dense, sparse, multi-vector) of a response with all three outputs."""
    diffs = [0.0, 0.0, 0.0]
    assert resp.dimensions == 32 and resp.multi_vector_dimensions == 32 and resp.sparse_dimensions == 402
    for i, emb in enumerate(resp.embeddings):
        dense = matrix(emb.values, emb.packed, 1, 32)[0]
        diffs[0] = max(diffs[0], float(np.abs(dense - want["dense_vecs"][i]).max()))
        lexical = {int(k): float(v) for k, v in want["lexical_weights"][i].items()}
        assert list(emb.sparse.indices) == sorted(lexical) and lexical
        diffs[1] = max(diffs[1], max(abs(v - lexical[k]) for k, v in zip(emb.sparse.indices, emb.sparse.values)))
        colbert = want["colbert_vecs"][i]
        mv = emb.multi_vector
        assert mv.rows == colbert.shape[0] and emb.rows == 0
        diffs[2] = max(diffs[2], float(np.abs(matrix(mv.values, mv.packed, mv.rows, 32) - colbert).max()))
    assert max(diffs) <= TOL, diffs
    return diffs


def test_all_three_outputs_of_one_pass_match_flagembedding(service: Served, reference: Any) -> None:
    for text in TEXTS:  # alone
        assert_matches(embed(service, [text], outputs=ALL), expected(reference, [text]))
    batch = [*TEXTS, TEXTS[0] * 6]  # mixed lengths in one request
    for encoding in (pb.VECTOR_ENCODING_FLOAT_LIST, pb.VECTOR_ENCODING_PACKED):
        diffs = assert_matches(embed(service, batch, outputs=ALL, encoding=encoding), expected(reference, batch))
        print(f"bge-m3 max abs diff dense/sparse/multi-vector: {diffs}")


def test_no_outputs_means_the_primary_output_in_the_original_layout(service: Served, reference: Any) -> None:
    resp = embed(service, TEXTS)
    got = np.array([list(e.values) for e in resp.embeddings], dtype=np.float32)
    assert np.abs(got - expected(reference, TEXTS)["dense_vecs"]).max() <= TOL
    assert resp.dimensions == 32 and resp.multi_vector_dimensions == 0 and not resp.embeddings[0].HasField("sparse")


def test_one_output_alone_and_sparse_tokens(service: Served, reference: Any) -> None:
    want = expected(reference, TEXTS)
    sparse = embed(service, TEXTS, outputs=[pb.VECTOR_KIND_SPARSE], return_tokens=True)
    assert resp_dims(sparse) == (0, 0, 402)
    for emb, lexical in zip(sparse.embeddings, want["lexical_weights"]):
        assert not emb.values and not emb.packed and not emb.HasField("multi_vector")
        ids = sorted(int(k) for k in lexical)
        assert list(emb.sparse.indices) == ids
        assert list(emb.sparse.tokens) == reference.tokenizer.convert_ids_to_tokens(ids)
    multi = embed(service, TEXTS, outputs=[pb.VECTOR_KIND_MULTI_VECTOR], encoding=pb.VECTOR_ENCODING_PACKED)
    assert resp_dims(multi) == (0, 32, 0)
    for emb, colbert in zip(multi.embeddings, want["colbert_vecs"]):
        assert not emb.packed and not emb.HasField("sparse")
        mv = emb.multi_vector
        assert np.abs(matrix(mv.values, mv.packed, mv.rows, 32) - colbert).max() <= TOL
    quantized = embed(service, TEXTS[:1], outputs=[pb.VECTOR_KIND_SPARSE, pb.VECTOR_KIND_DENSE], output_type=2)
    assert len(quantized.embeddings[0].int_values) == 32 and quantized.embeddings[0].sparse.values


def resp_dims(resp: pb.EmbedResponse) -> tuple[int, int, int]:
    return resp.dimensions, resp.multi_vector_dimensions, resp.sparse_dimensions


def test_outputs_a_model_lacks_are_refused_naming_the_field(service: Served, r: redis.Redis) -> None:
    before = {m: entries_added(r, m) for m in ("bge-m3", "bge-m3-dense")}
    cases = [
        ("bge-m3-dense", {"outputs": [pb.VECTOR_KIND_SPARSE]}, "outputs[0]: model 'bge-m3-dense' (text-dense) offers"),
        ("bge-m3", {"outputs": [pb.VECTOR_KIND_DENSE, pb.VECTOR_KIND_DENSE]}, "outputs[1]: dense is listed twice"),
        ("bge-m3", {"outputs": [7]}, "outputs[0]: unknown value 7"),
        ("bge-m3", {"outputs": [pb.VECTOR_KIND_UNSPECIFIED]}, "outputs[0]: unknown value 0"),
        ("bge-m3", {"return_tokens": True}, "return_tokens:"),
        ("bge-m3", {"outputs": [pb.VECTOR_KIND_SPARSE], "output_type": 2}, "output_type: sparse vectors"),
    ]
    for model, options, needle in cases:
        request = pb.EmbedRequest(model=model, inputs=[pb.Input(text="x")], **options)
        with pytest.raises(grpc.RpcError) as err:
            service.stub.Embed(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in err.value.details(), options
    assert {m: entries_added(r, m) for m in before} == before


def test_list_models_shows_each_models_outputs(service: Served) -> None:
    listed = {m.name: m for m in service.stub.ListModels(pb.ListModelsRequest(), timeout=10).models}
    assert list(listed["bge-m3"].capabilities.outputs) == ALL
    assert list(listed["bge-m3-dense"].capabilities.outputs) == [pb.VECTOR_KIND_DENSE]


def test_jobs_carry_outputs(service: Served) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        jobs = jpb_grpc.JobsStub(channel)
        inputs = [pb.Input(text=t) for t in TEXTS]
        spec = jpb.JobSpec(model="bge-m3", outputs=[pb.VECTOR_KIND_SPARSE, pb.VECTOR_KIND_MULTI_VECTOR])
        job = jobs.SubmitJob(jpb.SubmitJobRequest(spec=spec, inputs=inputs), timeout=30)
        wait_until(lambda: jobs.GetJob(jpb.GetJobRequest(id=job.id)).state == jpb.JOB_STATE_SUCCEEDED, 60, what="job")
        results = [res.embedding for res in jobs.GetJobResults(jpb.GetJobResultsRequest(id=job.id), timeout=30)]
        direct = embed(service, TEXTS, outputs=[pb.VECTOR_KIND_SPARSE, pb.VECTOR_KIND_MULTI_VECTOR]).embeddings
        for got, want in zip(results, direct):
            assert (
                list(got.sparse.indices) == list(want.sparse.indices)
                and got.multi_vector.rows == want.multi_vector.rows
            )
            assert np.allclose(got.multi_vector.values, want.multi_vector.values, atol=1e-5)
        bad = jpb.JobSpec(model="bge-m3-dense", outputs=[pb.VECTOR_KIND_MULTI_VECTOR])
        with pytest.raises(grpc.RpcError) as err:
            jobs.SubmitJob(jpb.SubmitJobRequest(spec=bad, inputs=inputs), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "spec.outputs[0]:" in err.value.details()


def test_both_clients_ask_for_outputs_alike(service: Served, reference: Any) -> None:
    import asyncio

    from embedstream.client import AsyncClient, Client

    names = ["dense", "sparse", "multi-vector"]
    with Client(f"127.0.0.1:{service.port}") as client:
        got = client.embed(TEXTS, model="bge-m3", outputs=names)
        plain = client.embed(TEXTS, model="bge-m3")
        with pytest.raises(ValueError, match="outputs: unknown"):
            client.embed(TEXTS, model="bge-m3", outputs=["colbert"])

    async def run() -> list[Any]:
        async with AsyncClient(f"127.0.0.1:{service.port}") as aclient:
            return await aclient.embed(TEXTS, model="bge-m3", outputs=names)

    twin = asyncio.run(run())
    want = expected(reference, TEXTS)
    assert np.abs(plain - want["dense_vecs"]).max() <= TOL
    for i, (one, two) in enumerate(zip(got, twin)):
        assert one.dense is not None and one.multi_vector is not None and one.sparse is not None
        assert np.abs(one.dense - want["dense_vecs"][i]).max() <= TOL
        assert np.abs(one.multi_vector - want["colbert_vecs"][i]).max() <= TOL
        assert one.sparse.indices.tolist() == sorted(int(k) for k in want["lexical_weights"][i])
        assert one.sparse.dimensions == len(reference.tokenizer)
        assert np.array_equal(one.dense, two.dense) and one.sparse == two.sparse
        assert np.array_equal(one.multi_vector, two.multi_vector)


LONG = " ".join(f"{TEXTS[i % 3]} number {i}." for i in range(12))
CHUNKING = pb.ChunkOptions(size_tokens=24, overlap_tokens=4)


def test_chunked_long_inputs_pool_each_output(service: Served, reference: Any) -> None:
    """Each chunk's outputs equal FlagEmbedding on the chunk's text; pooled: dense mean (normalized),
    sparse max per token id, multi-vector the chunks' token vectors concatenated."""
    chunks = embed(
        service,
        [LONG],
        outputs=ALL,
        long_inputs=pb.LONG_INPUTS_CHUNK,
        chunking=pb.ChunkOptions(size_tokens=24, overlap_tokens=4, output=pb.CHUNK_OUTPUT_CHUNKS),
    )
    pieces = [LONG[e.chunk.char_start : e.chunk.char_end] for e in chunks.embeddings]
    assert len(pieces) > 2 and chunks.metadata.chunks == len(pieces)
    want = expected(reference, pieces)
    print(f"conformance bge-m3 chunks: max abs diffs {assert_matches(chunks, want)}")
    pooled = embed(service, [LONG], outputs=ALL, long_inputs=pb.LONG_INPUTS_CHUNK, chunking=CHUNKING)
    assert len(pooled.embeddings) == 1 and pooled.metadata.chunks == len(pieces)
    mean = np.mean(want["dense_vecs"], axis=0)
    lexical: dict[int, float] = {}
    for weights in want["lexical_weights"]:
        for k, v in weights.items():
            lexical[int(k)] = max(lexical.get(int(k), 0.0), float(v))
    pooled_want = {
        "dense_vecs": [mean / np.linalg.norm(mean)],
        "lexical_weights": [lexical],
        "colbert_vecs": [np.concatenate(want["colbert_vecs"])],
    }
    print(f"conformance bge-m3 pooled chunks: max abs diffs {assert_matches(pooled, pooled_want)}")


def test_http_takes_the_same_outputs(service: Served, reference: Any) -> None:
    import base64
    import json
    import urllib.error
    import urllib.request

    from tests.support.http import http_port

    body = {"model": "bge-m3", "input": TEXTS, "outputs": ["sparse", "multi-vector", "dense"]}
    request = urllib.request.Request(
        f"http://127.0.0.1:{http_port(service.gateway)}/v1/embeddings",
        data=json.dumps({**body, "encoding_format": "base64"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as got:
        data = json.loads(got.read())["data"]
    want = expected(reference, TEXTS)
    for item, dense, lexical, colbert in zip(data, want["dense_vecs"], want["lexical_weights"], want["colbert_vecs"]):
        assert np.abs(np.frombuffer(base64.b64decode(item["embedding"]), "<f4") - dense).max() <= TOL
        sparse, weights = item["sparse_embedding"], {int(k): float(v) for k, v in lexical.items()}
        assert sparse["indices"] == sorted(weights)
        assert max(abs(v - weights[k]) for k, v in zip(sparse["indices"], sparse["values"])) <= TOL
        rows = np.stack([np.frombuffer(base64.b64decode(row), "<f4") for row in item["multi_vector"]])
        assert np.abs(rows - colbert).max() <= TOL
    refused = urllib.request.Request(
        f"http://127.0.0.1:{http_port(service.gateway)}/v1/embeddings",
        data=json.dumps({"model": "bge-m3-dense", "input": "x", "outputs": ["sparse"]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(refused, timeout=30)
    assert err.value.code == 400 and "outputs[0]" in err.value.read().decode()


def test_token_ids_left_cuts_and_tokenize_with_every_output(service: Served, reference: Any) -> None:
    """Tokenize gives the ids FlagEmbedding reads; embedded as token ids they give the text's three
    outputs; a left cut equals FlagEmbedding with the tokenizer's ``truncation_side = "left"``."""
    told = service.stub.Tokenize(pb.TokenizeRequest(model="bge-m3", inputs=TEXTS), timeout=30).results
    ids = [[t.id for t in r.tokens] for r in told]
    assert ids == [reference.tokenizer(t)["input_ids"] for t in TEXTS]
    as_ids = pb.EmbedRequest(model="bge-m3", inputs=[pb.Input(tokens=pb.TokenIds(ids=i)) for i in ids], outputs=ALL)
    assert_matches(service.stub.Embed(as_ids, timeout=30), expected(reference, TEXTS))
    long = " ".join(f"word{i} {TEXTS[i % 3]}" for i in range(120))
    reference.tokenizer.truncation_side = "left"
    try:
        want = dict(
            reference.encode([long], max_length=512, return_dense=True, return_sparse=True, return_colbert_vecs=True)
        )
    finally:
        reference.tokenizer.truncation_side = "right"
    got = embed(service, [long], outputs=ALL, truncation_side=pb.TRUNCATION_SIDE_LEFT)
    assert got.metadata.truncated_inputs == 1
    print(f"conformance bge-m3 left cut: max abs diffs {assert_matches(got, want)}")
