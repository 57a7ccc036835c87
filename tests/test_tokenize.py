"""Token ids, Tokenize, Decode and truncation_side against a real gateway, Redis and workers, over
gRPC and HTTP: equal to the model's own tokenizer and to sentence-transformers / CrossEncoder with
``tokenizer.truncation_side = "left"``; every refusal names the field and queues nothing."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import openai
import pytest
import redis
from transformers import AutoTokenizer

from embedstream import keys, replywire, wire
from embedstream.redis_server import RedisServer
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc
from embedstream.v1 import jobs_pb2 as jpb
from tests.support import tinymodels
from tests.support.corpora import texts as corpus
from tests.support.http import Response, call, http_port
from tests.support.models import MINILM
from tests.support.processes import base_env, entries_added, start_gateway, start_workers
from tests.test_jobs import jobs, results, wait_done

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


@pytest.fixture(scope="module")
def text(redis_server: RedisServer, r: redis.Redis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Text]:
    root = tmp_path_factory.mktemp("tokenize")
    rerank = tinymodels.bert(root / "xenc", "xenc")
    registry = root / "models.toml"
    registry.write_text(f"""
default = "tk-minilm"

[models.tk-minilm]
family = "text-dense"
path = "{MINILM}"
prompts = {{ query = "query: " }}

[models.tk-rerank]
family = "rerank"
path = "{rerank}"

[models.tk-clip]
family = "image-text"
path = "{tinymodels.open_clip_model(root / "clip")}"

[models.tk-debug]
family = "debug"
dimensions = 8

[models.tk-orphan]
family = "text-dense"
path = "{MINILM}"
""")
    env = base_env(redis_server.url, registry, EMBEDSTREAM_THREADS="1", EMBEDSTREAM_MAX_INPUTS_PER_REQUEST="8")
    workers = start_workers(env, root, list(MODELS), r)
    gateway, port = start_gateway(env, root)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.EmbedderStub(channel)
    yield Text(stub, port, f"http://127.0.0.1:{http_port(gateway)}", r, rerank)
    channel.close()
    for proc in [gateway, *workers.values()]:
        proc.stop()


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(MINILM)


def embed(stub: pb_grpc.EmbedderStub, items: list[pb.Input], **kw: Any) -> np.ndarray:
    response = stub.Embed(pb.EmbedRequest(model="tk-minilm", inputs=items, **kw), timeout=60)
    return np.array([list(e.values) for e in response.embeddings], dtype=np.float32)


def ids_input(ids: list[int]) -> pb.Input:
    return pb.Input(tokens=pb.TokenIds(ids=ids))


def refused(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


# -- token-id inputs ----------------------------------------------------------------------------


def test_token_ids_from_the_models_tokenizer_embed_as_the_text_does(text: Text, tokenizer: Any) -> None:
    ids = tokenizer(TEXTS)["input_ids"]
    want = embed(text.stub, [pb.Input(text=t) for t in TEXTS])
    got = embed(text.stub, [ids_input(i) for i in ids])
    assert got.shape == (4, 384) and float(np.abs(got - want).max()) <= 1e-6
    mixed = embed(text.stub, [pb.Input(text=TEXTS[0]), ids_input(ids[1])])
    assert float(np.abs(mixed - want[:2]).max()) <= 1e-6
    # Ids are taken as given: without [CLS] and [SEP] the vector is another one.
    bare = embed(text.stub, [ids_input(tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"])])
    assert float(np.abs(bare[0] - want[0]).max()) > 1e-3


def test_token_ids_over_http_and_from_the_openai_sdk(text: Text, tokenizer: Any) -> None:
    ids = tokenizer(TEXTS)["input_ids"]
    want = embed(text.stub, [pb.Input(text=t) for t in TEXTS])
    many = text.post("/v1/embeddings", {"model": "tk-minilm", "input": ids}).json()
    one = text.post("/v1/embeddings", {"model": "tk-minilm", "input": ids[0]}).json()
    assert np.abs(np.array([d["embedding"] for d in many["data"]]) - want).max() <= 1e-6
    assert np.abs(np.array(one["data"][0]["embedding"]) - want[0]).max() <= 1e-6
    assert many["usage"]["prompt_tokens"] == sum(len(i) for i in ids)
    with openai.OpenAI(base_url=text.url + "/v1", api_key="none", max_retries=0) as client:
        got = client.embeddings.create(model="tk-minilm", input=ids, encoding_format="float")
    assert np.abs(np.array([d.embedding for d in got.data]) - want).max() <= 1e-6


BAD_IDS = [
    ("tk-minilm", [[101, 30522, 102]], {}, "inputs[0].tokens", "outside the vocabulary"),
    ("tk-minilm", [[101] * 257], {}, "inputs[0].tokens", "257 token ids exceed the 256"),
    ("tk-minilm", [[]], {}, "inputs[0].tokens", "at least one token id"),
    ("tk-minilm", [[101, 102]], {"prompt_name": "query"}, "prompt_name", "embedded as given"),
    ("tk-minilm", [[101, 102]], {"long_inputs": pb.LONG_INPUTS_CHUNK}, "long_inputs", "never cut or chunked"),
    ("tk-clip", [[101, 102]], {}, "inputs[0].tokens", "image-text model"),
    ("tk-debug", [[1, 2]], {}, "inputs[0].tokens", "debug model"),
]


@pytest.mark.parametrize(("model", "ids", "options", "field", "words"), BAD_IDS)
def test_bad_token_ids_are_invalid_argument_naming_the_field_and_enqueue_nothing(
    text: Text, model: str, ids: list[list[int]], options: dict[str, Any], field: str, words: str
) -> None:
    before = text.added()
    request = pb.EmbedRequest(model=model, inputs=[ids_input(i) for i in ids], **options)
    error = refused(lambda: text.stub.Embed(request, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith(f"{field}: ") and words in (error.details() or "")
    http = text.post("/v1/embeddings", {"model": model, "input": ids, **_json_options(options)})
    param = re.sub(r"^inputs(\[\d+\])\.tokens", r"input\1", field)
    assert http.status_code == 400 and http.json()["error"]["param"] == param, http.text
    assert text.added() == before


def _json_options(options: dict[str, Any]) -> dict[str, Any]:
    return {"long_inputs": "chunk"} if "long_inputs" in options else options


def test_http_token_arrays_must_be_integers_of_32_bits(text: Text) -> None:
    before = text.added()
    for body, param in (
        ({"input": [101, "x"]}, "input"),
        ({"input": [101, -1]}, "input"),
        ({"input": [101, True]}, "input"),
        ({"input": [[101], [2**32]]}, "input[1]"),
        ({"input": [[101], "text"]}, "input[1]"),
    ):
        response = text.post("/v1/embeddings", {"model": "tk-minilm", **body})
        assert response.status_code == 400 and response.json()["error"]["param"] == param, (body, response.text)
    assert text.added() == before


# -- Tokenize and Decode ------------------------------------------------------------------------


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


# -- truncation_side ----------------------------------------------------------------------------


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
