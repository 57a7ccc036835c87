"""The worker's answer scripts on a real redis-server: an answer and its acknowledgement are one
step, and a script Redis refuses for want of memory stores nothing and acknowledges nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio

from embedstream import jobstore, keys, replywire, wire
from embedstream.redis_server import RedisServer
from embedstream.workers import scripts

QUEUE = keys.queue("m")
REPLIES = "replies:{gw:test}"


@pytest.fixture
def r(tmp_path: Path) -> Iterator[redis.Redis]:
    """A private Redis (the tests fill its memory) holding one entry read by consumer ``c``."""
    server = RedisServer(tmp_path, appendonly=False).start()
    client = redis.Redis.from_url(server.url)
    client.xgroup_create(QUEUE, keys.GROUP, "0", mkstream=True)
    client.xadd(QUEUE, {keys.PAYLOAD: b"entry"})
    client.xreadgroup(keys.GROUP, "c", {QUEUE: ">"})
    client.xadd(REPLIES, {"x": b"opened"})
    yield client
    client.close()
    server.stop()


def entry_id(r: redis.Redis) -> bytes:
    return bytes(r.xrange(QUEUE)[0][0])


def job(r: redis.Redis) -> wire.Job:
    """A job record, and a chunk entry of it, made by the gateway's own script."""
    kw = r.get_connection_kwargs()
    client = redis.asyncio.Redis(host=kw["host"], port=kw["port"])

    async def create() -> str:
        try:
            return (await jobstore.JobStore(client).create("m", "tenant", 60_000)).job_id
        finally:
            await client.aclose()

    job_id = asyncio.run(create())
    assert r.eval(jobstore.COMPLETE, 1, keys.job_meta(job_id), 2, 0) == 1
    return wire.Job(id="j", reply_to="", deadline_ms=0, enqueued_ms=0, inputs=["a", "b"], job_id=job_id, chunk=0)


def full(r: redis.Redis) -> None:
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", 1)


def test_an_answer_and_its_acknowledgement_are_one_step(r: redis.Redis) -> None:
    sid = entry_id(r)
    out = r.eval(scripts.ANSWERED["reply"], 2, REPLIES, QUEUE, b"vectors", keys.GROUP, sid)
    assert out[1] == 1  # XDEL removed the entry
    assert r.xrange(REPLIES)[-1][1] == {keys.PAYLOAD.encode(): b"vectors"}
    assert r.xlen(QUEUE) == 0 and r.xpending(QUEUE, keys.GROUP)["pending"] == 0

    # A job chunk: recorded once, then acknowledged, in the same script.
    r.xadd(QUEUE, {keys.PAYLOAD: b"chunk"})
    r.xreadgroup(keys.GROUP, "c", {QUEUE: ">"})
    chunk = job(r)
    names, args = jobstore.recording(chunk, jobstore.Chunk(replywire.Reply("j", dimensions=4, count=2)))
    out = r.eval(scripts.ANSWERED["record"], len(names) + 1, *names, QUEUE, *args, keys.GROUP, entry_id(r))
    assert out == [1, 1]
    meta = jobstore.decode_meta(r.hgetall(names[0]))
    assert meta["done"] == 2 and meta["state"] == jobstore.SUCCEEDED
    assert r.xlen(QUEUE) == 0 and r.xpending(QUEUE, keys.GROUP)["pending"] == 0


def test_a_script_refused_for_want_of_memory_stores_nothing_and_acknowledges_nothing(r: redis.Redis) -> None:
    sid = entry_id(r)
    chunk = job(r)
    names, args = jobstore.recording(chunk, jobstore.Chunk(replywire.Reply("j", dimensions=4, count=2)))
    dead = [keys.dead_letters("m"), QUEUE], [10, b"entry", "poison", sid, "w", keys.GROUP, sid]
    meta_before = r.hgetall(names[0])
    calls = {
        "reply": (scripts.ANSWERED["reply"], [REPLIES, QUEUE], [b"vectors", keys.GROUP, sid]),
        "record": (scripts.ANSWERED["record"], [*names, QUEUE], [*args, keys.GROUP, sid]),
        "dead letter": (scripts.DEAD_LETTERED[None], *dead),
        "dead letter, caller told": (
            scripts.DEAD_LETTERED["reply"],
            [REPLIES, *dead[0]],
            [b"failed", *dead[1]],
        ),
        "dead letter, job told": (scripts.DEAD_LETTERED["record"], [*names, *dead[0]], [*args, *dead[1]]),
    }
    full(r)
    for what, (lua, names_, args_) in calls.items():
        with pytest.raises(redis.exceptions.OutOfMemoryError) as err:
            r.eval(lua, len(names_), *names_, *args_)
        assert "script" not in str(err.value), (what, err.value)  # refused at its start, not midway
    r.config_set("maxmemory", 0)
    assert r.xlen(REPLIES) == 1 and r.xlen(QUEUE) == 1
    assert r.xpending(QUEUE, keys.GROUP)["pending"] == 1
    assert r.exists(keys.dead_letters("m")) == 0
    assert r.hgetall(names[0]) == meta_before and r.exists(names[1]) == 0

    # Why the shebang: without one, Redis refuses only a script's first denyoom command, and only
    # where nothing was written before it; an acknowledgement first would let the answer through.
    full(r)
    legacy = "redis.call('XACK', KEYS[2], ARGV[2], ARGV[3])\nreturn redis.call('XADD', KEYS[1], '*', 'p', ARGV[1])"
    r.eval(legacy, 2, REPLIES, QUEUE, b"over the limit", keys.GROUP, sid)
    r.config_set("maxmemory", 0)
    assert r.xlen(REPLIES) == 2 and r.xpending(QUEUE, keys.GROUP)["pending"] == 0
