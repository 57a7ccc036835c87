"""The HTTP API's error statuses (400, 401, 404, 413, 429, 503, 504) against a real gateway, each with
nothing enqueued, and the HTTP calls counted by route and status."""

from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path

import pytest

from tests.support.http import Response, call, http_port
from tests.support.httpapi import DOCS, Api, free_port
from tests.support.processes import scrape, start_gateway

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


def test_every_error_code_has_an_http_status() -> None:
    from embedstream.errors import Code
    from embedstream.gateway.status import HTTP_STATUS

    assert set(HTTP_STATUS) == set(Code)
