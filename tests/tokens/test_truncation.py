"""Left truncation equal to the references (sentence-transformers, the cross-encoder), jobs honouring token ids
and the side, refusals of a side, and ListModels saying which models take token ids."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np

from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import jobs_pb2 as jpb
from tests.support.models import MINILM
from tests.support.tokenserved import LEFT, LONG, TEXTS, Text, embed, ids_input, refused
from tests.test_jobs import jobs, results, wait_done


def test_left_truncation_equals_sentence_transformers_with_truncation_side_left(text: Text) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(MINILM, device="cpu")
    want_right = reference.encode([LONG, TEXTS[0]])
    reference.tokenizer.truncation_side = "left"
    want_left = reference.encode([LONG, TEXTS[0]])
    items = [pb.Input(text=LONG), pb.Input(text=TEXTS[0])]
    right, left = embed(text.stub, items), embed(text.stub, items, truncation_side=LEFT)
    assert float(np.abs(right - want_right).max()) <= 1e-5 and float(np.abs(left - want_left).max()) <= 1e-5
    assert float(np.abs(left[0] - right[0]).max()) > 1e-2  # the other end of the text was kept
    for body in ({"truncation_side": "left"}, {"truncation_direction": "Left"}):
        got = text.post("/v1/embeddings", {"model": "tk-minilm", "input": [LONG], **body}).json()
        assert np.abs(np.array(got["data"][0]["embedding"]) - want_left[0]).max() <= 1e-5


def test_left_truncation_of_rerank_pairs_equals_the_cross_encoder(text: Text) -> None:
    from sentence_transformers import CrossEncoder

    reference = CrossEncoder(str(text.rerank_folder), max_length=128, device="cpu")
    pairs = [("what is redis?", LONG), ("what is redis?", TEXTS[3])]
    want_right = reference.predict(pairs)
    reference.tokenizer.truncation_side = "left"
    want_left = reference.predict(pairs)
    for side, want in ((pb.TRUNCATION_SIDE_RIGHT, want_right), (LEFT, want_left)):
        request = pb.RerankRequest(model="tk-rerank", query=pairs[0][0], documents=[LONG, TEXTS[3]])
        request.truncation_side = side
        got = {r.index: r.score for r in text.stub.Rerank(request, timeout=30).results}
        assert np.abs(np.array([got[0], got[1]]) - want).max() <= 1e-5
    assert abs(float(want_left[0]) - float(want_right[0])) > 1e-6


def test_a_job_honours_token_ids_and_truncation_side(text: Text, tokenizer: Any) -> None:
    items = [pb.Input(text=LONG), ids_input(tokenizer(TEXTS[0])["input_ids"])]
    want = embed(text.stub, items, truncation_side=LEFT, encoding=pb.VECTOR_ENCODING_FLOAT_LIST)
    channel, stub = jobs(text.port)
    with channel:
        spec = jpb.JobSpec(model="tk-minilm", truncation_side=LEFT)
        job = stub.SubmitJob(jpb.SubmitJobRequest(spec=spec, inputs=items), timeout=30)
        assert wait_done(stub, job.id).state == jpb.JOB_STATE_SUCCEEDED
        got = np.stack([np.frombuffer(r.embedding.packed, dtype="<f4") for r in results(stub, job.id)])
    assert float(np.abs(got - want).max()) <= 1e-6


def test_truncation_side_refusals(text: Text) -> None:
    before = text.added()
    unknown = pb.EmbedRequest(model="tk-minilm", inputs=[pb.Input(text="x")])
    unknown.truncation_side = 7  # type: ignore[assignment]  # a value from a newer contract
    error = refused(lambda: text.stub.Embed(unknown, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details() == "truncation_side: unknown value 7"
    clip = pb.EmbedRequest(model="tk-clip", inputs=[pb.Input(text="x")], truncation_side=LEFT)
    error = refused(lambda: text.stub.Embed(clip, timeout=10))
    assert "truncation_side: model 'tk-clip' (image-text) cuts texts on the right only" == error.details()
    http = text.post("/v1/rerank", {"model": "tk-rerank", "query": "q", "documents": ["d"], "truncation_side": "up"})
    assert http.status_code == 400 and http.json()["error"]["param"] == "truncation_side"
    assert text.added() == before


def test_list_models_says_which_models_take_token_ids(text: Text) -> None:
    models = {m.name: m for m in text.stub.ListModels(pb.ListModelsRequest(), timeout=10).models}
    assert models["tk-minilm"].vocabulary_size == 30522 and models["tk-minilm"].capabilities.token_ids
    assert models["tk-rerank"].vocabulary_size == 30522 and not models["tk-rerank"].capabilities.token_ids
    assert models["tk-clip"].vocabulary_size == 0 and models["tk-debug"].vocabulary_size == 0
