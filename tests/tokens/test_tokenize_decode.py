"""Tokenize and Decode: the model's own ids, strings and offsets, where it cuts, the tokenizer's text, TEI's
HTTP shapes, and refusals naming the field at the gateway and at the worker."""

from __future__ import annotations

import time
import uuid
from typing import Any

import grpc
import pytest
from transformers import AutoTokenizer

from embedstream import keys, replywire, wire
from embedstream.v1 import embedder_pb2 as pb
from tests.support.http import call
from tests.support.models import MINILM
from tests.support.tokenserved import LEFT, LONG, TEXTS, Text, embed, refused


def test_tokenize_gives_the_models_own_ids_strings_and_character_offsets(text: Text, tokenizer: Any) -> None:
    response = text.stub.Tokenize(pb.TokenizeRequest(model="tk-minilm", inputs=TEXTS), timeout=30)
    assert response.model == "tk-minilm" and response.max_input_tokens == 256
    for sentence, found in zip(TEXTS, response.results):
        want = tokenizer(sentence, return_offsets_mapping=True, return_special_tokens_mask=True)
        assert [t.id for t in found.tokens] == want["input_ids"]
        assert [t.token for t in found.tokens] == tokenizer.convert_ids_to_tokens(want["input_ids"])
        assert [(t.start, t.stop) for t in found.tokens] == [tuple(o) for o in want["offset_mapping"]]
        assert [t.special for t in found.tokens] == [bool(s) for s in want["special_tokens_mask"]]
        assert [t.text for t in found.tokens if not t.special] == [
            sentence[a:b] for a, b in want["offset_mapping"][1:-1]
        ]
        assert found.tokens[0].text == "[CLS]" and found.total == len(want["input_ids"]) and not found.truncated
    assert response.metadata.tokens == sum(len(r.tokens) for r in response.results)
    plain = text.stub.Tokenize(pb.TokenizeRequest(model="tk-minilm", inputs=TEXTS[:1], add_special_tokens=False))
    assert [t.id for t in plain.results[0].tokens] == tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"]


def test_tokenize_says_whether_and_where_the_model_cuts(text: Text, tokenizer: Any) -> None:
    whole = tokenizer(LONG)["input_ids"]
    right = tokenizer(LONG, truncation=True, max_length=256)["input_ids"]
    left_tokenizer = AutoTokenizer.from_pretrained(MINILM, truncation_side="left")
    left = left_tokenizer(LONG, truncation=True, max_length=256)["input_ids"]

    def tokenize(**kw: Any) -> pb.TokenizedText:
        return text.stub.Tokenize(pb.TokenizeRequest(model="tk-minilm", inputs=[LONG], **kw), timeout=30).results[0]

    cut = tokenize()
    assert [t.id for t in cut.tokens] == right and cut.truncated and cut.total == len(whole) > 256
    assert [t.id for t in tokenize(truncation_side=LEFT).tokens] == left != right
    assert [t.id for t in tokenize(truncate=False).tokens] == whole
    content = tokenize(truncation_side=LEFT, add_special_tokens=False)
    assert [t.id for t in content.tokens] == left[1:-1] and content.truncated


def test_decode_gives_the_tokenizers_text(text: Text, tokenizer: Any) -> None:
    ids = tokenizer(TEXTS)["input_ids"]
    request = pb.DecodeRequest(model="tk-minilm", inputs=[pb.TokenIds(ids=i) for i in ids])
    assert list(text.stub.Decode(request, timeout=30).texts) == tokenizer.batch_decode(ids, skip_special_tokens=True)
    request.skip_special_tokens = False
    assert list(text.stub.Decode(request, timeout=30).texts) == tokenizer.batch_decode(ids)


def test_tokenize_and_decode_over_http_in_teis_shapes(text: Text, tokenizer: Any) -> None:
    one = text.post("/tokenize", {"model": "tk-minilm", "inputs": "Hello world"}).json()
    assert one == [
        [
            {"id": 101, "text": "[CLS]", "special": True, "start": None, "stop": None, "token": "[CLS]"},
            {"id": 7592, "text": "Hello", "special": False, "start": 0, "stop": 5, "token": "hello"},
            {"id": 2088, "text": "world", "special": False, "start": 6, "stop": 11, "token": "world"},
            {"id": 102, "text": "[SEP]", "special": True, "start": None, "stop": None, "token": "[SEP]"},
        ]
    ]
    body = {"model": "tk-minilm", "inputs": [LONG, "hi"], "truncation_direction": "Left", "details": True}
    details = text.post("/tokenize", body).json()
    assert details["max_input_tokens"] == 256 and [r["truncated"] for r in details["results"]] == [True, False]
    assert details["results"][0]["count"] == 256 and details["results"][0]["total"] == len(tokenizer(LONG)["input_ids"])
    ids = tokenizer(TEXTS[:2])["input_ids"]
    decoded = text.post("/decode", {"model": "tk-minilm", "ids": ids}).json()
    assert decoded == tokenizer.batch_decode(ids, skip_special_tokens=True)
    single = text.post("/decode", {"model": "tk-minilm", "ids": ids[0], "skip_special_tokens": False}).json()
    assert single == [tokenizer.decode(ids[0])]


TOKENIZE_ERRORS = [
    ("tk-debug", ["x"], grpc.StatusCode.INVALID_ARGUMENT, "model: ", 400),
    ("tk-clip", ["x"], grpc.StatusCode.INVALID_ARGUMENT, "model: ", 400),
    ("tk-minilm", ["ok", " "], grpc.StatusCode.INVALID_ARGUMENT, "inputs[1]: ", 400),
    ("tk-minilm", ["x"] * 9, grpc.StatusCode.INVALID_ARGUMENT, "inputs: ", 413),
    ("nope", ["x"], grpc.StatusCode.NOT_FOUND, "model 'nope'", 404),
]


@pytest.mark.parametrize(("model", "texts", "code", "starts", "status"), TOKENIZE_ERRORS)
def test_tokenize_refusals_name_the_field_and_enqueue_nothing(
    text: Text, model: str, texts: list[str], code: grpc.StatusCode, starts: str, status: int
) -> None:
    before = text.added()
    error = refused(lambda: text.stub.Tokenize(pb.TokenizeRequest(model=model, inputs=texts), timeout=10))
    assert error.code() == code and (error.details() or "").startswith(starts), error.details()
    http = text.post("/tokenize", {"model": model, "inputs": texts})
    assert http.status_code == status, http.text
    assert text.added() == before


DECODE_ERRORS = [
    ("tk-minilm", [[101, 30522]], "inputs[0].ids: ", "ids[0]"),
    ("tk-minilm", [[101], []], "inputs[1].ids: ", "ids[1]"),
    ("tk-debug", [[1]], "model: ", "model"),
]


@pytest.mark.parametrize(("model", "ids", "starts", "param"), DECODE_ERRORS)
def test_decode_refusals_name_the_field_and_enqueue_nothing(
    text: Text, model: str, ids: list[list[int]], starts: str, param: str
) -> None:
    before = text.added()
    request = pb.DecodeRequest(model=model, inputs=[pb.TokenIds(ids=i) for i in ids])
    error = refused(lambda: text.stub.Decode(request, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and (error.details() or "").startswith(starts)
    http = text.post("/decode", {"model": model, "ids": ids})
    assert http.status_code == 400 and http.json()["error"]["param"] == param, http.text
    assert text.post("/decode", {"model": model, "ids": "101"}).json()["error"]["param"] == "ids"
    assert text.added() == before


def test_without_a_live_worker_tokenize_is_unavailable_and_a_passed_deadline_is_504(text: Text) -> None:
    for rpc, request in (
        (text.stub.Tokenize, pb.TokenizeRequest(model="tk-orphan", inputs=["x"])),
        (text.stub.Decode, pb.DecodeRequest(model="tk-orphan", inputs=[pb.TokenIds(ids=[101])])),
    ):
        error = refused(lambda rpc=rpc, request=request: rpc(request, timeout=10))
        assert error.code() == grpc.StatusCode.UNAVAILABLE and "no live worker" in (error.details() or "")
    for path, body in (("/tokenize", {"inputs": "x"}), ("/decode", {"ids": [101]})):
        response = text.post(path, {"model": "tk-orphan", **body})
        assert response.status_code == 503 and response.headers["retry-after"] == "1", response.text
    late = call("POST", text.url + "/tokenize", {"inputs": "x"}, {"X-Request-Timeout": "0.000001"})
    assert late.status_code == 504 and late.json()["error"]["code"] == "deadline_exceeded"


def test_a_worker_refuses_what_the_gateway_would_have(text: Text) -> None:
    """Entries may come from anywhere: a worker checks again and answers INVALID_ARGUMENT, and lives."""
    replies = f"test-replies-{uuid.uuid4().hex}"
    text.admin.xadd(replies, {"x": "1"})
    forged = [
        ("tk-debug", wire.Job("a", replies, 2**62, 0, ["hello"], kind="tokenize"), "has no tokenizer"),
        ("tk-minilm", wire.Job("b", replies, 2**62, 0, [[101, 99999, 102]]), "inputs[0]: token id 99999"),
        ("tk-minilm", wire.Job("c", replies, 2**62, 0, [[101, 99999]], kind="decode"), "inputs[0].ids: token id"),
        ("tk-clip", wire.Job("d", replies, 2**62, 0, ["x"], truncation_side="left"), "cuts texts on the right only"),
    ]
    for model, job, _ in forged:
        text.admin.xadd(keys.queue(model), {keys.PAYLOAD: wire.encode_job(job)})
    got: dict[str, replywire.Reply] = {}
    deadline = time.monotonic() + 60
    while len(got) < len(forged) and time.monotonic() < deadline:
        for _, fields in text.admin.xrange(replies):
            if keys.PAYLOAD.encode() in fields:
                reply = replywire.decode_reply(fields[keys.PAYLOAD.encode()])
                got[reply.id] = reply
        time.sleep(0.05)
    for _, job, words in forged:
        assert got[job.id].error_code == "INVALID_ARGUMENT" and words in got[job.id].error_message
    assert embed(text.stub, [pb.Input(text="still serving")]).shape == (1, 384)
    text.admin.delete(replies)
