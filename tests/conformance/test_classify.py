"""Sequence classification: Classify and ClassifyStream (and HTTP's /classify, TEI's /predict) equal
transformers' text-classification pipeline on tiny BERT classifiers, single-label (softmax) and
multi-label (sigmoid), with every function_to_apply; a folder without its classifier head is refused."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest
import redis
import torch

from embedstream import keys
from embedstream.v1 import embedder_pb2 as pb
from tests.support import familymodels as fm
from tests.support import tinymodels
from tests.support.conformance import TEXTS, FamilyModels, Served
from tests.support.http import call, http_port
from tests.support.processes import Proc, cli, entries_added, wait_until

MOODS = ["negative", "neutral", "positive"]
TOPICS = ["news", "sport", "tech", "art"]
LONG = "the quick brown fox jumps over the lazy dog " * 40  # over the tiny models' 128 tokens
TOLERANCE = 1e-5
FUNCTIONS = {
    "softmax": pb.CLASSIFY_FUNCTION_SOFTMAX,
    "sigmoid": pb.CLASSIFY_FUNCTION_SIGMOID,
    "none": pb.CLASSIFY_FUNCTION_NONE,
}


@pytest.fixture(scope="module")
def served(family_models: FamilyModels, serve: Callable[..., Served]) -> Served:
    moods = family_models.get("classifier-moods", lambda d: tinymodels.classifier(d, MOODS))
    topics = family_models.get("classifier-topics", lambda d: tinymodels.classifier(d, TOPICS, multi_label=True))
    return serve(
        {
            "moods": {"family": "classify", "path": str(moods), "aliases": ["sentiment"]},
            "topics": {"family": "classify", "path": str(topics)},
        }
    )


def pipeline(folder: str, **kw: Any) -> Any:
    from transformers import pipeline as make

    return make("text-classification", model=folder, top_k=None, device="cpu", **kw)


def classify(served: Served, model: str, texts: list[str], **kw: Any) -> pb.ClassifyResponse:
    return served.stub.Classify(pb.ClassifyRequest(model=model, inputs=texts, **kw), timeout=60)


def assert_pipeline(got: pb.ClassifyResponse, want: list[list[dict[str, Any]]], what: str) -> float:
    """Labels in the pipeline's order with its scores, within TOLERANCE; prints the max difference."""
    diff = 0.0
    assert len(got.results) == len(want)
    for result, labels in zip(got.results, want):
        assert [x.label for x in result.labels] == [x["label"] for x in labels], what
        diff = max(diff, *(abs(x.score - y["score"]) for x, y in zip(result.labels, labels)))
    print(f"conformance {what}: max abs diff {diff:.2e}")
    assert diff <= TOLERANCE, f"{what}: {diff:.2e}"
    return diff


@pytest.mark.parametrize("model", ["moods", "topics"])
def test_classify_equals_the_text_classification_pipeline(
    served: Served, family_models: FamilyModels, model: str
) -> None:
    folder = str(family_models.get(f"classifier-{model}", lambda d: d))
    reference = pipeline(folder)
    assert_pipeline(classify(served, model, TEXTS), reference(TEXTS), f"classify {model} batch")
    for text in TEXTS:
        assert_pipeline(classify(served, model, [text]), reference([text]), f"classify {model} single")
    for name, value in FUNCTIONS.items():
        want = reference(TEXTS, function_to_apply=name)
        assert_pipeline(classify(served, model, TEXTS, function=value), want, f"classify {model} {name}")


def test_multi_label_scores_are_sigmoids_and_single_label_ones_sum_to_one(served: Served) -> None:
    moods, topics = classify(served, "moods", TEXTS[:1]), classify(served, "topics", TEXTS[:1])
    assert sum(x.score for x in moods.results[0].labels) == pytest.approx(1.0, abs=1e-5)
    assert sum(x.score for x in topics.results[0].labels) > 1.0  # independent sigmoids


def test_top_k_and_raw_logits(served: Served, family_models: FamilyModels) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = str(family_models.get("classifier-moods", lambda d: d))
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokens = AutoTokenizer.from_pretrained(folder)(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**tokens).logits.numpy()
    got = classify(served, "sentiment", TEXTS, top_k=2, return_logits=True)
    full = classify(served, "moods", TEXTS)
    for row, result, every in zip(logits, got.results, full.results):
        assert [(a.label, a.score) for a in result.labels] == [(a.label, a.score) for a in every.labels][:2]
        for item in result.labels:
            assert item.HasField("logit") and abs(item.logit - float(row[item.id])) <= TOLERANCE
            assert MOODS[item.id] == item.label
    assert not full.results[0].labels[0].HasField("logit")
    assert got.model == "moods" and got.metadata.tokens > 0


def test_classify_stream_answers_in_order_as_classify_does(served: Served) -> None:
    requests = [pb.ClassifyRequest(model="moods", inputs=[t], request_id=str(i)) for i, t in enumerate(TEXTS)]
    answers = list(served.stub.ClassifyStream(iter(requests), timeout=60))
    assert [a.request_id for a in answers] == [str(i) for i in range(len(TEXTS))]
    for answer, text in zip(answers, TEXTS):
        one = classify(served, "moods", [text])
        assert [x.label for x in answer.results[0].labels] == [x.label for x in one.results[0].labels]
        got, want = ([x.score for x in a.results[0].labels] for a in (answer, one))
        assert np.abs(np.array(got) - np.array(want)).max() <= TOLERANCE


def test_left_truncation_equals_the_pipeline_with_truncation_side_left(
    served: Served, family_models: FamilyModels
) -> None:
    reference = pipeline(str(family_models.get("classifier-moods", lambda d: d)))
    reference.tokenizer.truncation_side = "left"
    want = reference([LONG], truncation=True, max_length=128)
    got = classify(served, "moods", [LONG], truncation_side=pb.TRUNCATION_SIDE_LEFT)
    assert_pipeline(got, want, "classify left truncation")
    assert got.metadata.truncated_inputs == 1


def test_list_models_shows_the_family_and_labels(served: Served) -> None:
    models = served.models()
    assert models["moods"].family == pb.MODEL_FAMILY_CLASSIFY
    assert list(models["moods"].capabilities.labels) == MOODS
    assert list(models["topics"].capabilities.labels) == TOPICS
    assert models["moods"].dimensions == 3 and models["moods"].vocabulary_size == 30522


def test_classify_over_http_in_teis_predict_shape(served: Served) -> None:
    url = f"http://127.0.0.1:{http_port(served.gateway)}"
    want = classify(served, "moods", TEXTS[:2])
    for path in ("/classify", "/predict"):
        one = call("POST", url + path, {"model": "moods", "inputs": TEXTS[0]}).json()
        assert [x["label"] for x in one] == [x.label for x in want.results[0].labels]
        assert np.allclose([x["score"] for x in one], [x.score for x in want.results[0].labels], atol=1e-6)
        batch = call("POST", url + path, {"model": "moods", "inputs": TEXTS[:2]}).json()
        assert len(batch) == 2 and [x["label"] for x in batch[1]] == [x.label for x in want.results[1].labels]
    raw = call("POST", url + "/predict", {"model": "moods", "inputs": TEXTS[0], "raw_scores": True}).json()
    logits = classify(served, "moods", TEXTS[:1], function=pb.CLASSIFY_FUNCTION_NONE)
    assert np.allclose([x["score"] for x in raw], [x.score for x in logits.results[0].labels], atol=1e-6)
    top = call("POST", url + "/classify", {"model": "topics", "inputs": "x", "top_k": 1, "return_logits": True})
    assert len(top.json()) == 1 and set(top.json()[0]) == {"label", "score", "logit"}


GRPC_ERRORS = [
    ({"model": "nope", "inputs": ["x"]}, grpc.StatusCode.NOT_FOUND, "model 'nope'"),
    ({"model": "moods", "inputs": []}, grpc.StatusCode.INVALID_ARGUMENT, "inputs: "),
    ({"model": "moods", "inputs": ["ok", ""]}, grpc.StatusCode.INVALID_ARGUMENT, "inputs[1]: "),
    ({"model": "moods", "inputs": ["x"], "function": 9}, grpc.StatusCode.INVALID_ARGUMENT, "function: "),
    ({"model": "moods", "inputs": [LONG], "truncate": False}, grpc.StatusCode.INVALID_ARGUMENT, "inputs[0]: "),
    ({"model": "moods", "inputs": ["x"], "truncation_side": 4}, grpc.StatusCode.INVALID_ARGUMENT, "truncation_side: "),
]


@pytest.mark.parametrize(("fields", "code", "starts"), GRPC_ERRORS)
def test_bad_classify_requests_name_the_field_and_enqueue_nothing(
    served: Served, r: redis.Redis, fields: dict[str, Any], code: grpc.StatusCode, starts: str
) -> None:
    before = entries_added(r, "moods")
    with pytest.raises(grpc.RpcError) as caught:
        served.stub.Classify(pb.ClassifyRequest(**fields), timeout=10)
    assert caught.value.code() == code and (caught.value.details() or "").startswith(starts), caught.value.details()
    assert entries_added(r, "moods") == before


def test_embed_and_classify_refuse_each_others_models(served: Served, r: redis.Redis) -> None:
    before = entries_added(r, "moods")
    with pytest.raises(grpc.RpcError) as caught:
        served.stub.Embed(pb.EmbedRequest(model="moods", inputs=[pb.Input(text="x")]), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "call Classify" in (caught.value.details() or "")
    url = f"http://127.0.0.1:{http_port(served.gateway)}"
    assert call("POST", url + "/v1/embeddings", {"model": "moods", "input": "x"}).status_code == 400
    assert entries_added(r, "moods") == before


HTTP_ERRORS = [
    ({"model": "moods"}, 400, "inputs"),
    ({"model": "moods", "inputs": [["a", "b"]]}, 400, "inputs[0]"),
    ({"model": "moods", "inputs": ["a", 3]}, 400, "inputs[1]"),
    ({"model": "moods", "inputs": ["a", " "]}, 400, "inputs[1]"),
    ({"model": "moods", "inputs": "a", "top_k": -1}, 400, "top_k"),
    ({"model": "moods", "inputs": "a", "function_to_apply": "tanh"}, 400, "function_to_apply"),
    ({"model": "moods", "inputs": "a", "raw_scores": True, "function_to_apply": "softmax"}, 400, "raw_scores"),
    ({"model": "moods", "inputs": "a", "truncation_direction": "middle"}, 400, "truncation_direction"),
    ({"model": "nope", "inputs": "a"}, 404, None),
]


@pytest.mark.parametrize(("body", "status", "param"), HTTP_ERRORS)
def test_bad_http_classify_requests(
    served: Served, r: redis.Redis, body: dict[str, Any], status: int, param: Any
) -> None:
    before = entries_added(r, "moods")
    url = f"http://127.0.0.1:{http_port(served.gateway)}"
    response = call("POST", url + "/predict", body)
    assert response.status_code == status and response.json()["error"]["param"] == param, response.text
    assert entries_added(r, "moods") == before


def test_a_classifier_without_its_head_is_refused(
    served: Served, family_models: FamilyModels, serve: Callable[..., Served], r: redis.Redis
) -> None:
    """Strict loading: a folder whose config says BertForSequenceClassification but holds no classifier
    weights would be served with a random head by transformers; the worker exits 2 instead."""
    headless = family_models.get("classifier-headless", lambda d: tinymodels.bert(d, "dense"))
    fm.set_json(
        headless / "config.json",
        architectures=["BertForSequenceClassification"],
        id2label={"0": "a", "1": "b"},
        label2id={"a": 0, "b": 1},
    )
    refused = serve({"headless": {"family": "classify", "path": str(headless)}}, start=[])
    proc = Proc("worker-headless", ["worker", "--model", "headless"], refused.env, refused.logs)
    proc.proc.wait(timeout=180)
    proc.stop()
    assert proc.proc.returncode == 2, proc.log()
    assert "missing weights classifier.bias, classifier.weight" in " ".join(proc.log().split())
    assert r.ttl(keys.load_failure("headless")) > 0
    wait_until(lambda: refused.models()["headless"].state == pb.MODEL_STATE_FAILED, 10, what="failed state")
    with pytest.raises(grpc.RpcError) as caught:
        refused.stub.Classify(pb.ClassifyRequest(model="headless", inputs=["x"]), timeout=10)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_inspect_detects_a_classifier_and_prints_its_labels(family_models: FamilyModels) -> None:
    folder = family_models.get("classifier-topics", lambda d: tinymodels.classifier(d, TOPICS, multi_label=True))
    done = cli("inspect", str(folder))
    assert done.returncode == 0, done.stderr
    facts = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    assert facts["family"] == "classify" and facts["labels"] == "news, sport, tech, art (scores: sigmoid)"
    assert facts["vocabulary"] == "30522"
