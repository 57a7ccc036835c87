"""Rate limits: shared by gateways through Redis, streams slowed instead of failed, the client's retry, GCRA."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from embedstream import keys
from embedstream.client import Client, Retry
from embedstream.connections import connect
from embedstream.gateway.ratelimit import Limit, RateLimiter
from embedstream.v1 import embedder_pb2 as pb
from embedstream.v1 import embedder_pb2_grpc as pb_grpc
from tests.security.conftest import Redis, Secure
from tests.support.processes import Proc, entries_added
from tests.support.rpcs import bearer, inputs


def test_the_rate_limit_is_shared_by_two_gateways(secure: Secure, second: tuple[Proc, int], red: Redis) -> None:
    key = bearer(secure.keys["limited"])  # 5 inputs/s, burst 20
    with (
        grpc.insecure_channel(f"127.0.0.1:{secure.port}") as one,
        grpc.insecure_channel(f"127.0.0.1:{second[1]}") as two,
    ):
        pb_grpc.EmbedderStub(one).Embed(pb.EmbedRequest(inputs=inputs(20)), metadata=key, timeout=10)
        before = entries_added(red.admin, "debug")
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.EmbedderStub(two).Embed(pb.EmbedRequest(inputs=inputs(20)), metadata=key, timeout=10)
        refused_in = time.monotonic() - started
        after = entries_added(red.admin, "debug")
        other = pb_grpc.EmbedderStub(two).Embed(
            pb.EmbedRequest(inputs=inputs(20)), metadata=bearer(secure.keys["acme"]), timeout=10
        )
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry_ms = int(dict(err.value.trailing_metadata())["retry-after-ms"])
    assert 0 < retry_ms <= 4000 and f"retry in {retry_ms} ms" in err.value.details()
    assert "'limited'" in err.value.details() and "5 inputs/s (burst 20)" in err.value.details()
    assert refused_in < 2.0  # refused at once, not queued
    assert after == before  # nothing was enqueued
    assert len(other.embeddings) == 20  # another tenant's budget is its own
    assert 0 < red.admin.pttl(keys.rate("limited")) <= 8000  # state expires when the bucket refills


def test_a_stream_over_its_rate_slows_down_instead_of_failing(secure: Secure) -> None:
    requests = [pb.EmbedRequest(request_id=str(k), inputs=inputs(10)) for k in range(4)]  # 50/s, burst 10
    started = time.monotonic()
    with grpc.insecure_channel(f"127.0.0.1:{secure.port}") as channel:
        stub = pb_grpc.EmbedderStub(channel)
        answers = list(stub.EmbedStream(iter(requests), metadata=bearer(secure.keys["trickle"]), timeout=30))
    assert [a.request_id for a in answers] == ["0", "1", "2", "3"]
    assert time.monotonic() - started >= 0.55  # 30 inputs past the burst at 50 inputs/s


def test_the_client_retries_a_rate_limited_call_after_its_hint(secure: Secure) -> None:
    hasty = Retry(attempts=2, initial_s=0.001, max_s=0.001)  # alone, far too soon for 20 inputs/s
    with Client(f"127.0.0.1:{secure.port}", model="debug", api_key=secure.keys["hinted"], retry=hasty) as client:
        client.embed(["spend"] * 10)  # the whole burst of 10
        assert client.embed(["wait"] * 10).shape == (10, 64)  # refused, then retried after retry-after-ms


def test_gcra_admits_a_burst_then_waits_and_lets_a_large_request_through_a_full_bucket(red: Redis) -> None:
    async def run() -> tuple[int, int, int, int, int]:
        client = connect(red.url, 1.5)
        limiter = RateLimiter(client, 1.5)
        limit = Limit(rate=10, burst=5)
        try:
            burst = await limiter.wait_ms("gcra-a", limit, 5)
            after = await limiter.wait_ms("gcra-a", limit, 1)
            large = await limiter.wait_ms("gcra-b", limit, 50)
            behind = await limiter.wait_ms("gcra-b", limit, 1)
            again = await limiter.wait_ms("gcra-b", limit, 60)
        finally:
            await client.aclose(close_connection_pool=True)
        return burst, after, large, behind, again

    burst, after, large, behind, again = asyncio.run(run())
    assert burst == 0 and 0 < after <= 100  # one input at 10/s: at most 100 ms away
    assert large == 0  # 50 inputs > burst 5, but the bucket was full
    assert 4000 < behind <= 4600 and 4500 < again <= 5000  # then it is paid off at 10/s
    assert 0 < red.admin.pttl(keys.rate("gcra-b")) <= 5001
