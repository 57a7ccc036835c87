"""The embedding cache's records and budgeted store, against a real Redis (not yet wired into workers)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import redis

from embedstream import cache, keys
from embedstream.redis_server import RedisServer


def test_records_round_trip_bit_for_bit() -> None:
    row = np.array([0.1, -2.5, 3.0], dtype=np.float32)
    assert cache.decode_output(cache.encode_output("dense", row)).tobytes() == row.tobytes()
    matrix = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(cache.decode_output(cache.encode_output("multi", matrix)), matrix)
    idx, w = cache.decode_output(cache.encode_output("sparse", (np.array([3, 9], np.uint32), np.array([1.5, 2.0]))))
    assert idx.tolist() == [3, 9] and w.tolist() == [1.5, 2.0]


def test_keys_change_with_every_output_changing_option(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    fp = cache.fingerprint("text-dense", str(tmp_path), "float32", "1")
    assert fp == cache.fingerprint("text-dense", str(tmp_path), "float32", "1")
    assert fp != cache.fingerprint("text-dense", str(tmp_path), "float16", "1")
    (tmp_path / "model.safetensors").write_bytes(b"other weights")
    assert fp != cache.fingerprint("text-dense", str(tmp_path), "float32", "1")
    base = cache.digest(fp, True, "", [101, 7, 102], "t")
    variants = [
        cache.digest("x" + fp[1:], True, "", [101, 7, 102], "t"),
        cache.digest(fp, False, "", [101, 7, 102], "t"),
        cache.digest(fp, True, "query", [101, 7, 102], "t"),
        cache.digest(fp, True, "", [101, 8, 102], "t"),
    ]
    assert base not in variants and len(set(variants)) == 4


def test_the_store_keeps_the_budget_least_recently_used_first(redis_server: RedisServer, r: redis.Redis) -> None:
    import redis.asyncio as aioredis

    async def scenario() -> tuple[list[bytes | None], int]:
        client = aioredis.Redis.from_url(redis_server.url)
        store = cache.Store(client, "cachetest", budget_bytes=250, ttl_ms=60_000)
        evicted = 0
        for i in range(5):
            evicted += await store.put(f"d{i}", bytes([i]) * 100, now_ms=i)
        got = await store.get([f"d{i}" for i in range(5)])
        await client.aclose()
        return got, evicted

    got, evicted = asyncio.run(scenario())
    assert evicted == 3 and got[:3] == [None] * 3 and got[3:] == [b"\x03" * 100, b"\x04" * 100]
    assert int(r.get(keys.cache_bytes("cachetest")) or 0) == 200
    assert 0 < r.pttl(keys.cache_record("cachetest", "d4")) <= 60_000
