"""Which stream a request goes on: the gateway's directory follows what the model's workers read.

Workers of this version read three streams per model (``keys.lanes``: calls, stream requests,
job chunks) and publish ``lanes = 3`` with every heartbeat; a worker from before the stream lane
publishes no such field, and a gateway then keeps stream requests on the call stream, which
every worker reads. Real Redis, the gateway's real directory.
"""

from __future__ import annotations

import asyncio
import time
import tomllib
from pathlib import Path

import redis
import redis.asyncio as aioredis

from embedstream import heartbeat, keys
from embedstream.gateway.directory import Directory
from embedstream.redis_server import RedisServer
from embedstream.registryfile import parse

REGISTRY = '[models.lanes]\nfamily = "debug"\ndimensions = 8\n'


def lane_known(redis_server: RedisServer, recheck: bool) -> bool:
    async def run() -> bool:
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            directory = Directory(client, parse(tomllib.loads(REGISTRY), Path.cwd()), liveness_s=10)
            if recheck:  # a call's recheck when the snapshot shows no live worker yet
                await directory.recheck("lanes")
                assert directory.states["lanes"].workers == 1
            else:
                await directory.refresh()
            return directory.states["lanes"].streams_lane
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_stream_requests_get_their_own_stream_only_where_the_workers_read_it(
    redis_server: RedisServer, r: redis.Redis
) -> None:
    now = int(time.time() * 1000)
    r.zadd(keys.workers("lanes"), {"w-1": now})
    old = {"family": "debug", "output": "dense", "dimensions": 8, "max_input_tokens": 512, "normalizes": 1}
    try:
        r.hset(keys.model_info("lanes"), mapping=old)  # a worker from before the lane
        assert heartbeat.decode_info(r.hgetall(keys.model_info("lanes"))).lanes == 2  # type: ignore[union-attr]
        assert not lane_known(redis_server, recheck=False)
        assert not lane_known(redis_server, recheck=True)
        r.hset(keys.model_info("lanes"), "lanes", heartbeat.LANES)  # this version's worker
        assert lane_known(redis_server, recheck=False)
        assert lane_known(redis_server, recheck=True)
        assert keys.lanes("lanes") == (keys.queue("lanes"), keys.streams("lanes"), keys.bulk("lanes"))
    finally:
        r.delete(keys.workers("lanes"), keys.model_info("lanes"))
