"""Token-id inputs: embedded as the text they came from, over gRPC, HTTP and the OpenAI SDK; bad ids refused
naming the field, with nothing enqueued."""

from __future__ import annotations

import re
from typing import Any

import grpc
import numpy as np
import openai
import pytest

from embedstream.v1 import embedder_pb2 as pb
from tests.support.tokenserved import TEXTS, Text, embed, ids_input, refused


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
