"""The cache through every way in: EmbedStream, jobs, the Python clients, HTTP and embed-file; bad
modes refused before anything is queued; tenants apart; the byte budget, TTLs and refused writes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest

from embedstream import acl, apikeys, keys
from embedstream.client import AsyncClient, Client
from embedstream.redis_server import RedisServer
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import jobs_pb2 as jpb
from tests.cache.test_hits import request, vectors
from tests.support.cached import SMALL_BUDGET, Cached
from tests.support.http import call, http_port
from tests.support.processes import cli, entries_added, start_gateway, stub, wait_until
from tests.support.rpcs import bearer
from tests.test_jobs import jobs


def test_embed_stream_answers_from_the_cache(cached: Cached) -> None:
    texts = ["streamed once", "streamed twice"]
    with stub(cached.port) as s:
        first = s.Embed(request(texts, "cdebug"), timeout=30)
        cached.stored("cdebug", 2)
        calls = cached.calls("cdebug")
        got = list(s.EmbedStream(iter([request(texts, "cdebug", request_id=str(i)) for i in range(3)]), timeout=30))
    assert [r.metadata.cached_inputs for r in got] == [2, 2, 2] and cached.calls("cdebug") == calls
    assert all(vectors(r) == vectors(first) for r in got)


def test_the_python_clients_and_jobs_choose_the_cache(cached: Cached) -> None:
    texts = [f"client text {i}" for i in range(5)]
    before = len(cached.records("cdebug"))
    with Client(f"127.0.0.1:{cached.port}", model="cdebug") as client:
        bypassed = client.embed(texts, cache="bypass")
        assert len(cached.records("cdebug")) == before  # bypass writes nothing
        assert np.array_equal(client.embed(texts), bypassed)
        cached.stored("cdebug", before + 5)
        calls = cached.calls("cdebug")

        async def twin() -> np.ndarray:
            async with AsyncClient(f"127.0.0.1:{cached.port}", model="cdebug") as aio:
                return await aio.embed(texts)  # type: ignore[no-any-return]

        assert np.array_equal(asyncio.run(twin()), bypassed)
        assert np.array_equal(np.concatenate(list(client.embed_stream(texts, batch_size=2))), bypassed)
        job = client.submit_job(texts).wait(timeout=60)
        assert job.state == jpb.JOB_STATE_SUCCEEDED and job.inputs_cached == 5 and job.inputs_done == 5
        assert cached.calls("cdebug") == calls  # the async client, the stream and the job: all hits
        refreshed = client.upload_job(iter(texts), cache="refresh", chunk_size=2)
        assert refreshed.wait(timeout=60).inputs_cached == 0
        assert np.array_equal(np.stack([v for _, v in refreshed.results()]), bypassed)
        assert client.submit_job(texts, cache="bypass").wait(timeout=60).inputs_cached == 0
        assert cached.calls("cdebug") > calls
        with pytest.raises(ValueError, match="cache must be one of"):
            client.embed(texts, cache="sometimes")


def test_bad_cache_modes_are_refused_naming_the_field_before_anything_is_queued(cached: Cached) -> None:
    added = entries_added(cached.r, "cdebug")
    channel, jobs_stub = jobs(cached.port)
    with stub(cached.port) as s, channel:
        with pytest.raises(grpc.RpcError) as bad:
            s.Embed(request(["x"], "cdebug", cache=7), timeout=10)  # type: ignore[arg-type]
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "cache: unknown value 7" in str(
            bad.value.details()
        )
        spec = jpb.JobSpec(model="cdebug", cache=9)  # type: ignore[arg-type]
        with pytest.raises(grpc.RpcError) as bad_job:
            jobs_stub.SubmitJob(jpb.SubmitJobRequest(spec=spec, inputs=[pb.Input(text="x")]), timeout=10)
        assert bad_job.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "spec.cache: unknown value 9" in str(bad_job.value.details())
    url = f"http://127.0.0.1:{http_port(cached.gateway)}/v1/embeddings"
    refused = call("POST", url, {"model": "cdebug", "input": ["x"], "cache": "sometimes"})
    assert refused.status_code == 400 and "cache: 'sometimes' is not one of" in refused.text
    assert entries_added(cached.r, "cdebug") == added


def test_http_says_how_many_inputs_came_from_the_cache(cached: Cached) -> None:
    url = f"http://127.0.0.1:{http_port(cached.gateway)}/v1/embeddings"
    body = {"model": "cdebug", "input": ["over http", "over http, again"]}
    first = call("POST", url, body)
    assert first.status_code == 200 and first.headers["x-embedstream-cached-inputs"] == "0"
    cached.stored("cdebug", 2)
    again = call("POST", url, body)
    assert again.headers["x-embedstream-cached-inputs"] == "2" and again.json()["data"] == first.json()["data"]
    assert call("POST", url, dict(body, cache="bypass")).headers["x-embedstream-cached-inputs"] == "0"


def test_embed_file_uses_bypasses_and_refreshes_the_cache(cached: Cached, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"embed-file line {i}\n" for i in range(6)))
    target = ["--target", f"127.0.0.1:{cached.port}", "--model", "cdebug", "--no-progress"]
    before = len(cached.records("cdebug"))

    def run(name: str, *extra: str) -> np.ndarray:
        done = cli("embed-file", str(corpus), "-o", str(tmp_path / name), *target, *extra)
        assert done.returncode == 0, done.stderr
        return np.load(tmp_path / name)  # type: ignore[no-any-return]

    bypassed = run("bypass.npy", "--cache", "bypass")
    assert len(cached.records("cdebug")) == before
    assert np.array_equal(run("first.npy"), bypassed)
    cached.stored("cdebug", before + 6)
    calls = cached.calls("cdebug")
    assert np.array_equal(run("hit.npy"), bypassed) and np.array_equal(run("job.npy", "--job"), bypassed)
    assert cached.calls("cdebug") == calls
    assert np.array_equal(run("refresh.npy", "--cache", "refresh"), bypassed) and cached.calls("cdebug") > calls


def test_tenants_never_share_entries(cached: Cached) -> None:
    a, b = apikeys.new_key(), apikeys.new_key()
    env = dict(cached.env, EMBEDSTREAM_API_KEYS=f"acme {apikeys.digest(a)}; umbrella {apikeys.digest(b)}")
    gateway, port = start_gateway(env, cached.logs)
    try:
        with stub(port) as s:
            ask = request(["a text two tenants embed"], "cdebug")

            def cached_inputs(key: str) -> int:
                return int(s.Embed(ask, metadata=bearer(key), timeout=30).metadata.cached_inputs)

            before = len(cached.records("cdebug"))
            assert cached_inputs(a) == 0
            cached.stored("cdebug", before + 1)
            assert cached_inputs(a) == 1 and cached_inputs(b) == 0
            cached.stored("cdebug", before + 2)
            assert cached_inputs(b) == 1
    finally:
        gateway.stop()


def test_the_budget_evicts_the_least_recently_used_and_every_key_expires(cached: Cached) -> None:
    cached.start(["cbudget"], EMBEDSTREAM_CACHE_BYTES=str(SMALL_BUDGET), EMBEDSTREAM_CACHE_TTL_S="600")
    texts = [f"budgeted text {i}" for i in range(6)]
    with stub(cached.port) as s:

        def embed(text: str) -> int:
            stored = cached.metric("cbudget", "embedstream_cache_stored_bytes_total")
            got = int(s.Embed(request([text], "cbudget"), timeout=30).metadata.cached_inputs)
            if not got:
                wait_until(lambda: cached.metric("cbudget", "embedstream_cache_stored_bytes_total") > stored, 10)
            return got

        assert [embed(t) for t in texts[:4]] == [0, 0, 0, 0]  # 4 records fit in the budget
        assert embed(texts[0]) == 1  # used again: texts[1] is now the least recently used
        assert embed(texts[4]) == 0  # over the budget: one record goes
        assert cached.metric("cbudget", "embedstream_cache_evictions_total") == 1
        assert [embed(texts[i]) for i in (0, 2, 3, 4)] == [1, 1, 1, 1] and embed(texts[1]) == 0
    assert 0 < int(cached.r.get(keys.cache_bytes("cbudget")) or 0) <= SMALL_BUDGET
    assert 0 < cached.metric("cbudget", "embedstream_cache_bytes") <= SMALL_BUDGET
    found = list(cached.r.scan_iter(f"{keys.PREFIX}:{keys.model_tag('cbudget')}:cache*"))
    assert len(found) == 6  # 4 records, the index, the byte count
    assert all(0 < cached.r.pttl(k) <= 600_000 for k in found)


def test_a_refused_cache_write_is_counted_and_the_answer_goes_through(
    cached: Cached, redis_server: RedisServer
) -> None:
    # A worker whose Redis user may not run STRLEN, which only the STORE script runs (before it
    # writes anything): Redis refuses every cache write, and nothing else.
    rules = [rule for rule in acl.rules("worker") if rule != "+strlen"]
    password = apikeys.new_key()
    cached.r.execute_command("ACL", "SETUSER", "cache-nowrite", "reset", "on", f">{password}", *rules)
    url = f"redis://cache-nowrite:{password}@127.0.0.1:{redis_server.port}/0"
    try:
        cached.start(["cnowrite"], EMBEDSTREAM_REDIS_URL=url)
        with stub(cached.port) as s:
            for _ in range(2):
                answer = s.Embed(request(["refused by redis"], "cnowrite"), timeout=30)
                assert answer.metadata.cached_inputs == 0 and len(answer.embeddings) == 1
        wait_until(lambda: cached.metric("cnowrite", "embedstream_cache_failures_total", op="write") == 2, 10)
        assert cached.records("cnowrite") == set()
        assert cached.metric("cnowrite", "embedstream_cache_misses_total") == 2
    finally:
        cached.workers.pop("cnowrite").stop()
        cached.r.execute_command("ACL", "DELUSER", "cache-nowrite")
