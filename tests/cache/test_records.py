"""The embedding cache's records, keys, fingerprint and budgeted store, against a real Redis.

The service's behaviour (hits skip the model, refresh, bypass, restarts, every API) is
tests/test_cache_service.py's."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import redis.asyncio as aioredis

from embedstream import cache, keys, wire
from embedstream.profile import Profile
from embedstream.redis_server import RedisServer
from embedstream.registry import ModelSpec

JOB = wire.Job("id", "replies", 0, 0, ["a text"])


def test_records_round_trip_bit_for_bit() -> None:
    row = np.array([0.1, -2.5, 3.0], dtype=np.float32)
    (part,) = cache.decode_record(cache.encode_record("dense", [cache.Part(row, 7, True)]), "dense") or []
    assert part.output.tobytes() == row.tobytes() and part.length == 7 and part.truncated and part.span is None
    matrix = np.arange(6, dtype=np.float32).reshape(2, 3)
    chunks = [cache.Part(matrix, 5, False, (0, 3, 0, 11)), cache.Part(matrix[:1], 3, False, (2, 4, 8, 20))]
    got = cache.decode_record(cache.encode_record("multi", chunks), "multi") or []
    assert [p.span for p in got] == [(0, 3, 0, 11), (2, 4, 8, 20)]
    assert np.array_equal(got[0].output, matrix) and np.array_equal(got[1].output, matrix[:1])
    pair = (np.array([3, 9], np.uint32), np.array([1.5, 2.0], np.float32))
    ((idx, w),) = [
        p.output
        for p in cache.decode_record(cache.encode_record("sparse", [cache.Part(pair, 4, False)]), "sparse") or []
    ]
    assert idx.tolist() == [3, 9] and w.tolist() == [1.5, 2.0]


def test_a_record_of_another_kind_or_format_or_corrupt_is_a_miss() -> None:
    value = cache.encode_record("dense", [cache.Part(np.zeros(3, np.float32), 1, False)])
    assert cache.decode_record(value, "multi") is None
    assert cache.decode_record(b"\x93\x09\xa5dense\x90", "dense") is None  # format 9
    assert cache.decode_record(b"not msgpack at all", "dense") is None


def test_keys_change_with_every_option_the_model_sees_and_only_those() -> None:
    fp = "f" * 32
    base = cache.digest(fp, JOB, True, "", "a text")
    changed = {
        "fingerprint": cache.digest("e" + fp[1:], JOB, True, "", "a text"),
        "normalize": cache.digest(fp, JOB, False, "", "a text"),
        "prompt": cache.digest(fp, JOB, True, "query: ", "a text"),
        "input": cache.digest(fp, JOB, True, "", "a text!"),
        "image bytes": cache.digest(fp, JOB, True, "", b"a text"),
        "token ids": cache.digest(fp, JOB, True, "", [101, 1037, 3793, 102]),
    }
    for name, value in {
        "cache_scope": "tenant-b",
        "input_type": "query",
        "truncate": False,
        "dimensions": 128,
        "query": "what?",
        "chunking": True,
        "truncation_side": "left",
        "prompt": "separation",  # a prompt name whose text is empty still selects its own (Jina) adapter
    }.items():
        changed[name] = cache.digest(fp, dataclasses.replace(JOB, **{name: value}), True, "", "a text")
    chunked = dataclasses.replace(JOB, chunking=True)
    changed["chunk_tokens"] = cache.digest(fp, dataclasses.replace(chunked, chunk_tokens=64), True, "", "a text")
    changed["chunk_overlap"] = cache.digest(fp, dataclasses.replace(chunked, chunk_overlap=4), True, "", "a text")
    assert base not in changed.values() and len(set(changed.values())) == len(changed), changed
    # Applied to the model's output after the cache: one record serves them all, byte for byte.
    for name, value in {"output_type": "int8", "return_tokens": True, "cache": "refresh", "id": "other"}.items():
        assert cache.digest(fp, dataclasses.replace(JOB, **{name: value}), True, "", "a text") == base, name


def test_the_fingerprint_follows_the_weights_and_the_serving_not_the_file_times(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "download.metadata").write_text("fetched at 12:00")
    spec, served = ModelSpec("m", "text-dense", path=str(tmp_path)), Profile("text-dense", pooling="mean")
    fp = cache.fingerprint(spec, served)
    os.utime(weights, (1, 1))
    (tmp_path / ".cache" / "download.metadata").write_text("fetched at 13:00")
    assert cache.fingerprint(spec, served) == fp  # a copy of the folder elsewhere shares the cache
    copy = shutil.copytree(tmp_path, tmp_path.parent / f"{tmp_path.name}-copy")
    assert cache.fingerprint(dataclasses.replace(spec, path=str(copy)), served) == fp
    assert cache.fingerprint(dataclasses.replace(spec, max_batch_size=7, aliases=("x",)), served) == fp
    for other in (dataclasses.replace(spec, dtype="float16"), dataclasses.replace(spec, name="m2")):
        assert cache.fingerprint(other, served) != fp
    assert cache.fingerprint(spec, dataclasses.replace(served, pooling="cls")) != fp
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1  # one bit in the middle of the weights, same size
    weights.write_bytes(bytes(data))
    assert cache.fingerprint(spec, served) != fp


def run(
    redis_server: RedisServer,
    scenario: Callable[[cache.Store], Awaitable[Any]],
    budget: int = 10_000,
    ttl: int = 60_000,
) -> Any:
    async def go() -> Any:
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            return await scenario(cache.Store(client, "cachetest", budget, ttl))
        finally:
            await client.aclose()

    return asyncio.run(go())


@pytest.fixture
def model(r: redis.Redis) -> str:
    for key in r.scan_iter(f"{keys.PREFIX}:{keys.model_tag('cachetest')}:*"):
        r.delete(key)
    return "cachetest"


def record(size: int, fill: int) -> bytes:
    return bytes([fill]) * (size - cache.OVERHEAD)


def test_the_budget_drops_the_least_recently_used_and_reads_count_as_use(
    redis_server: RedisServer, r: redis.Redis, model: str
) -> None:
    async def scenario(store: cache.Store) -> tuple[list[Any], list[bytes | None]]:
        outcomes = [await store.put(f"d{i}", record(1000, i), now_ms=i) for i in range(3)]
        await store.get(["d0"], now_ms=10)  # d0 used again: d1 is now the least recently used
        outcomes.append(await store.put("d3", record(1000, 3), now_ms=11))
        return outcomes, await store.get([f"d{i}" for i in range(4)], now_ms=12)

    outcomes, got = run(redis_server, scenario, budget=3000)
    assert [[int(x) for x in o] for o in outcomes] == [[0, 1000, 1], [0, 2000, 1], [0, 3000, 1], [1, 3000, 1]]
    assert got[1] is None and [g is not None for g in got] == [True, False, True, True]
    assert int(r.get(keys.cache_bytes(model)) or 0) == 3000
    assert r.zcard(keys.cache_index(model)) == 3


def test_every_key_expires_and_expired_records_leave_the_count(
    redis_server: RedisServer, r: redis.Redis, model: str
) -> None:
    async def scenario(store: cache.Store) -> None:
        now = int(time.time() * 1000)
        await store.put("old", record(1000, 1), now_ms=now)
        r.delete(keys.cache_record(model, "old"))  # as if its TTL ran out
        await store.put("new", record(1000, 2), now_ms=now + 61_000)  # the TTL later

    run(redis_server, scenario, budget=10_000, ttl=60_000)
    found = list(r.scan_iter(f"{keys.PREFIX}:{keys.model_tag(model)}:*"))
    assert len(found) == 3  # the new record, the index, the byte count
    assert all(0 < r.pttl(k) <= 60_000 for k in found)
    assert int(r.get(keys.cache_bytes(model)) or 0) == 1000


def test_a_refresh_replaces_a_record_without_counting_it_twice(
    redis_server: RedisServer, r: redis.Redis, model: str
) -> None:
    async def scenario(store: cache.Store) -> list[bytes | None]:
        await store.put("d", record(1000, 1), now_ms=1)
        await store.put("d", record(1200, 2), now_ms=2)
        return await store.get(["d"], now_ms=3)

    assert run(redis_server, scenario) == [record(1200, 2)]
    assert int(r.get(keys.cache_bytes(model)) or 0) == 1200 and r.zcard(keys.cache_index(model)) == 1


def test_the_counted_overhead_covers_what_redis_spends_on_a_record(
    redis_server: RedisServer, r: redis.Redis, model: str
) -> None:
    """The budget bounds memory, not only payload: a record of a 384-d float32 vector costs Redis
    about its value plus the overhead counted (MEMORY USAGE of the record and the index)."""

    async def scenario(store: cache.Store) -> None:
        for i in range(200):
            await store.put(f"{i:064x}", bytes(1556), now_ms=i)  # MiniLM's record: 384 float32 + framing

    run(redis_server, scenario, budget=10**9)
    used = sum(r.memory_usage(keys.cache_record(model, f"{i:064x}")) or 0 for i in range(200))
    used += r.memory_usage(keys.cache_index(model), samples=0) or 0
    counted = int(r.get(keys.cache_bytes(model)) or 0)
    print(f"\n200 records: counted {counted} bytes, Redis reports {used}")
    assert 0.85 * used <= counted <= 1.2 * used


def test_near_maxmemory_the_cache_gives_memory_back_to_the_queue(tmp_path: Path) -> None:
    """Redis runs noeviction, so whatever the cache holds the queue cannot have: above 90% of
    maxmemory a STORE keeps nothing and drops the oldest records instead, and queue writes go on."""
    server = RedisServer(tmp_path, appendonly=False, options={"maxmemory": "4mb"}).start()
    admin = redis.Redis.from_url(server.url)
    try:

        async def scenario(store: cache.Store) -> list[Any]:
            return [await store.put(f"d{i}", bytes(64 << 10), now_ms=i) for i in range(80)]

        outcomes = [[int(x) for x in o] for o in run(server, scenario, budget=10**9)]
        first_refusal = next(i for i, (_, _, stored) in enumerate(outcomes) if not stored)
        assert 20 < first_refusal < 80 and all(given > 0 for given, _, stored in outcomes[first_refusal:] if not stored)
        memory = admin.info("memory")
        assert memory["used_memory"] <= memory["maxmemory"]
        assert admin.zcard(keys.cache_index("cachetest")) < first_refusal  # records went back
        admin.xadd(keys.queue("cachetest"), {"p": b"x" * 1024})  # the queue still takes work
        # Over maxmemory Redis refuses the lookup's marks of use; the records are read all the same.
        admin.config_set("maxmemory", str(memory["used_memory"] // 2))
        kept = [f"d{i}" for i in range(80) if admin.exists(keys.cache_record("cachetest", f"d{i}"))]

        async def read(store: cache.Store) -> list[bytes | None]:
            return await store.get([*kept, "never stored"], now_ms=1000)

        assert run(server, read) == [bytes(64 << 10)] * len(kept) + [None] and kept
    finally:
        admin.close()
        server.stop()
