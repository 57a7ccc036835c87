"""Sparse, multi-vector and rerank families against sentence-transformers (SparseEncoder,
multi-vector encoding, CrossEncoder)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc
from tests.support.families import TEXTS, Families, texts


def test_sparse_matches_sparse_encoder(stub: pb_grpc.EmbedderStub, families: Families) -> None:
    from sentence_transformers import SparseEncoder

    ref = SparseEncoder(str(families.models["splade"]), device="cpu")
    expected = ref.encode(TEXTS).to_dense().numpy()
    resp = stub.Embed(pb.EmbedRequest(model="splade", inputs=texts(TEXTS), return_tokens=True), timeout=30)
    assert resp.dimensions == 30522
    for row, emb in zip(expected, resp.embeddings):
        nz = np.flatnonzero(row)
        assert list(emb.sparse.indices) == nz.tolist() and len(nz) > 10
        assert np.abs(np.array(emb.sparse.values) - row[nz]).max() <= 1e-5
        assert list(emb.sparse.tokens) == ref.tokenizer.convert_ids_to_tokens(nz.tolist())
    with pytest.raises(grpc.RpcError) as err:
        stub.Embed(pb.EmbedRequest(model="tiny-st", inputs=texts(TEXTS), return_tokens=True), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "return_tokens" in err.value.details()


def test_multi_vector_matches_multi_vector_encoder(stub: pb_grpc.EmbedderStub, families: Families) -> None:
    from sentence_transformers import MultiVectorEncoder

    ref = MultiVectorEncoder(str(families.models["colbert"]), device="cpu")
    for input_type, expected in (
        (pb.INPUT_TYPE_DOCUMENT, ref.encode_document(TEXTS)),
        (pb.INPUT_TYPE_QUERY, ref.encode_query(TEXTS)),
    ):
        for encoding in (pb.VECTOR_ENCODING_FLOAT_LIST, pb.VECTOR_ENCODING_PACKED):
            resp = stub.Embed(
                pb.EmbedRequest(model="colbert", inputs=texts(TEXTS), input_type=input_type, encoding=encoding),
                timeout=30,
            )
            for emb, want in zip(resp.embeddings, expected):
                want = np.asarray(want)
                flat = np.frombuffer(emb.packed, "<f4") if emb.packed else np.array(emb.values, dtype=np.float32)
                assert emb.rows == want.shape[0] and np.abs(flat.reshape(emb.rows, 128) - want).max() <= 1e-5
    # Documents drop punctuation (the model's skiplist); queries keep it.
    doc = stub.Embed(pb.EmbedRequest(model="colbert", inputs=texts(TEXTS[2:]), input_type=2), timeout=30)
    query = stub.Embed(pb.EmbedRequest(model="colbert", inputs=texts(TEXTS[2:]), input_type=1), timeout=30)
    assert doc.embeddings[0].rows < query.embeddings[0].rows
    binary = stub.Embed(
        pb.EmbedRequest(model="colbert", inputs=texts(TEXTS[:1]), output_type=5, encoding=2), timeout=30
    )
    assert len(binary.embeddings[0].packed) == binary.embeddings[0].rows * 16


def test_rerank_matches_cross_encoder(stub: pb_grpc.EmbedderStub, families: Families) -> None:
    from sentence_transformers import CrossEncoder

    query = "what do embedding models do?"
    docs = [*TEXTS, "cats sleep most of the day", "vectors, vectors everywhere"]
    scores = CrossEncoder(str(families.models["rerank"]), device="cpu").predict([(query, d) for d in docs])
    order = np.argsort(-scores, kind="stable")
    resp = stub.Rerank(pb.RerankRequest(model="rerank", query=query, documents=docs, return_documents=True), timeout=30)
    assert [r.index for r in resp.results] == order.tolist()
    assert np.abs(np.array([r.score for r in resp.results]) - scores[order]).max() <= 1e-5
    assert [r.document for r in resp.results] == [docs[i] for i in order]
    top = stub.Rerank(pb.RerankRequest(model="rerank", query=query, documents=docs, top_n=2), timeout=30)
    assert [r.index for r in top.results] == order[:2].tolist() and top.results[0].document == ""
    streamed = list(
        stub.RerankStream(
            iter([pb.RerankRequest(model="rerank", query=query, documents=docs, request_id=str(i)) for i in range(3)]),
            timeout=30,
        )
    )
    assert [s.request_id for s in streamed] == ["0", "1", "2"]
    assert all([r.index for r in s.results] == order.tolist() for s in streamed)
    for call, request, needle in (
        (stub.Rerank, pb.RerankRequest(model="tiny-st", query=query, documents=docs), "Rerank needs a rerank model"),
        (stub.Rerank, pb.RerankRequest(model="rerank", query=" ", documents=docs), "query:"),
        (stub.Rerank, pb.RerankRequest(model="rerank", query=query, documents=["a", ""]), "documents[1]:"),
        (stub.Embed, pb.EmbedRequest(model="rerank", inputs=texts(docs)), "call Rerank"),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in err.value.details()
