"""Async jobs in Redis: the record of one job, its results, and the scripts that change them.

A job is a hash (``keys.job_meta``) and a hash of results by chunk
(``keys.job_results``), both under the job's hash tag and both expiring at the
job's ``expires`` time, so an expired job leaves no keys. Its inputs travel as
chunk entries on the model's bulk stream. Every state change is one Lua script,
so a redelivered chunk is counted once, and the job ends exactly when its last
chunk is recorded, whichever of "upload complete" and "last chunk done" comes
second.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from embedstream import clock, keys, replywire, wire

#: Inputs per chunk entry on the bulk stream.
CHUNK = 64

UPLOADING, QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = 0, 1, 2, 3, 4, 5
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
MAX_ERRORS = 5

# Ends the job once every input is accounted for. Expects KEYS[1] = meta.
_FINALIZE = """
local function finalize(now)
  local f = redis.call('HMGET', KEYS[1], 'total', 'done', 'failed', 'state')
  local total, done, failed, state = tonumber(f[1]), tonumber(f[2]), tonumber(f[3]), tonumber(f[4])
  if total and total >= 0 and state ~= 0 and state < 3 and done + failed >= total then
    local final = 3
    if failed > 0 then final = 4 end
    redis.call('HSET', KEYS[1], 'state', final, 'finished', now)
  end
end
"""

#: Worker: record one chunk's result. KEYS: meta, results, errors.
#: ARGV: chunk, value, inputs, failed (0/1), dimensions, now_ms, error, inputs from the cache.
#: Returns 1 recorded, 0 duplicate, -1 job gone (expired/abandoned), -2 cancelled.
RECORD = (
    _FINALIZE
    + """
local state = tonumber(redis.call('HGET', KEYS[1], 'state'))
if not state then return -1 end
if state == 5 then return -2 end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('PEXPIREAT', KEYS[2], redis.call('HGET', KEYS[1], 'expires'))
if ARGV[4] == '1' then
  redis.call('HINCRBY', KEYS[1], 'failed', ARGV[3])
  if redis.call('LLEN', KEYS[3]) < 5 then
    redis.call('RPUSH', KEYS[3], ARGV[7])
    redis.call('PEXPIREAT', KEYS[3], redis.call('HGET', KEYS[1], 'expires'))
  end
else
  redis.call('HINCRBY', KEYS[1], 'done', ARGV[3])
  if ARGV[8] ~= '0' then redis.call('HINCRBY', KEYS[1], 'cached', ARGV[8]) end
  if ARGV[5] ~= '0' then redis.call('HSET', KEYS[1], 'dimensions', ARGV[5]) end
end
if state == 1 then redis.call('HSET', KEYS[1], 'state', 2) end
finalize(ARGV[6])
return 1
"""
)

#: How many KEYS and ARGV :data:`RECORD` takes (as :func:`recording` builds them).
RECORD_ARITY = (3, 8)

#: Gateway: create a job's record (UPLOADING) and, with an idempotency key, the key with it, in
#: one step: of concurrent calls with one key exactly one creates; the rest get its job and digest.
#: Under maxmemory the first write (HSET) is refused before anything is written, so neither is.
#: KEYS: meta of the new job[, idempotency key]. ARGV: job id, digest, expires (unix ms), then the
#: record's field, value pairs. Returns {job id, digest} of the job the key names (the new one if made).
CREATE = """
if KEYS[2] then
  local held = redis.call('HMGET', KEYS[2], 'job', 'digest')
  if held[1] then return {held[1], held[2]} end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
if KEYS[2] then
  redis.call('HSET', KEYS[2], 'job', ARGV[1], 'digest', ARGV[2])
  redis.call('PEXPIREAT', KEYS[2], ARGV[3])
end
return {ARGV[1], ARGV[2]}
"""

#: Gateway: the upload (or submit) is complete. KEYS: meta. ARGV: total, now_ms.
COMPLETE = (
    _FINALIZE
    + """
if not redis.call('HGET', KEYS[1], 'state') then return 0 end
redis.call('HSET', KEYS[1], 'total', ARGV[1])
if tonumber(redis.call('HGET', KEYS[1], 'state')) == 0 then
  local st = 1
  if tonumber(redis.call('HGET', KEYS[1], 'done')) + tonumber(redis.call('HGET', KEYS[1], 'failed')) > 0 then st = 2 end
  redis.call('HSET', KEYS[1], 'state', st)
end
finalize(ARGV[2])
return 1
"""
)

#: Gateway: cancel unless the job already ended. KEYS: meta. ARGV: now_ms. Returns the state after.
CANCEL = """
local state = tonumber(redis.call('HGET', KEYS[1], 'state'))
if not state then return -1 end
if state < 3 then redis.call('HSET', KEYS[1], 'state', 5, 'finished', ARGV[1]) return 5 end
return state
"""


#: A stored chunk that succeeded: this prefix, then the worker's reply (``replywire.encode_reply``).
RESULT = b"R"
#: A stored chunk whose inputs all failed: this prefix, then ``<inputs>:<message>``.
FAILURE = b"E"


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk's answer as stored: the worker's reply, or the error all its inputs failed with."""

    reply: replywire.Reply | None = None
    #: Inputs of a failed chunk (0 for a reply).
    failed: int = 0
    error: str = ""


def encode_chunk(chunk: Chunk) -> bytes:
    """The stored value of a chunk's answer."""
    if chunk.reply is None:
        return FAILURE + f"{chunk.failed}:{chunk.error}".encode()
    return RESULT + replywire.encode_reply(chunk.reply)


def decode_chunk(value: bytes) -> Chunk:
    """A stored chunk's answer; a value of an unknown kind or a corrupt reply raises :class:`replywire.WireError`."""
    if value[:1] == FAILURE:
        count, _, message = value[1:].decode().partition(":")
        return Chunk(failed=int(count), error=message)
    if value[:1] != RESULT:
        raise replywire.WireError(f"a stored result of an unknown kind ({value[:1]!r})")
    try:
        return Chunk(replywire.decode_reply(value[1:]))
    except replywire.WireError as exc:
        raise replywire.WireError(f"a stored result is corrupt: {exc}") from None


def decode_meta(raw: dict[bytes, bytes]) -> dict[str, Any]:
    """The meta hash with text keys and numeric values as ints."""
    out: dict[str, Any] = {}
    for k, v in raw.items():
        key = k.decode()
        text = v.decode()
        out[key] = int(text) if text.lstrip("-").isdigit() else text
    return out


#: Keys and arguments of one script call.
Call = tuple[list[str], list[Any]]


def recording(job: wire.Job, chunk: Chunk) -> Call:
    """The RECORD call that stores ``chunk`` as the answer of ``job`` (a chunk entry), counted
    once however often it is answered. Built once, so a retried write sends the same bytes."""
    failed = int(chunk.reply is None)
    dims, cached = (0, 0) if chunk.reply is None else (chunk.reply.dimensions, chunk.reply.cached)
    return (
        [keys.job_meta(job.job_id), keys.job_results(job.job_id), keys.job_errors(job.job_id)],
        [job.chunk, encode_chunk(chunk), len(job.inputs), failed, dims, _now(), chunk.error, cached],
    )


def _now() -> int:
    # Job times are whole unix milliseconds (the Job message's *_at_ms fields).
    return int(clock.now_ms())


def new_id(tenant: str, idempotency_key: str = "") -> str:
    """A new job id: 32 hex digits, the first ``keys.JOB_TAG`` of them the idempotency key's tag
    (so the key and the record share a Redis Cluster slot), random otherwise."""
    prefix = keys.idempotency_tag(tenant, idempotency_key) if idempotency_key else secrets.token_hex(keys.JOB_TAG // 2)
    return prefix + secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class Created:
    """What :meth:`JobStore.create` did: made ``job_id`` (``expires`` set), or found the job an
    idempotency key had made (``expires`` None) and the digest of the request that made it."""

    job_id: str
    digest: str
    expires: int | None


class JobStore:
    """Creates and changes job records in one Redis deployment, only through the scripts above."""

    def __init__(self, redis: Any) -> None:
        self._create = redis.register_script(CREATE)
        self._record = redis.register_script(RECORD)
        self._complete = redis.register_script(COMPLETE)
        self._cancel = redis.register_script(CANCEL)

    async def create(
        self, model: str, tenant: str, ttl_ms: int, idempotency_key: str = "", digest: str = "", chunk: int = CHUNK
    ) -> Created:
        """A new job's record (UPLOADING) whose entries hold ``chunk`` inputs each, with
        ``idempotency_key`` (remembered as long as the record, with ``digest``) unless that key
        already names a job: then that one."""
        job_id = new_id(tenant, idempotency_key)
        created = _now()
        expires = created + ttl_ms
        record: dict[str, Any] = {
            "model": model,
            "tenant": tenant,
            "state": UPLOADING,
            "total": -1,
            "done": 0,
            "failed": 0,
            "created": created,
            "finished": 0,
            "expires": expires,
            "chunk": chunk,
            "dimensions": 0,
        }
        names = [keys.job_meta(job_id)]
        if idempotency_key:
            names.append(keys.idempotency(tenant, idempotency_key))
        args = [job_id, digest, expires, *(x for pair in record.items() for x in pair)]
        held, held_digest = await self._create(keys=names, args=args)
        held_id = held.decode() if isinstance(held, bytes) else str(held)
        if held_id == job_id:
            return Created(job_id, digest, expires)
        return Created(held_id, held_digest.decode() if isinstance(held_digest, bytes) else str(held_digest), None)

    def complete(self, job_id: str, total: int) -> Any:
        """The upload (or submit) of ``total`` inputs is complete (an awaitable)."""
        return self._complete(keys=[keys.job_meta(job_id)], args=[total, _now()])

    def cancel(self, job_id: str) -> Any:
        """Cancel unless the job already ended (an awaitable of the state after)."""
        return self._cancel(keys=[keys.job_meta(job_id)], args=[_now()])

    def record(self, call: Call, client: Any = None) -> Any:
        """Run a :func:`recording` (an awaitable; queued as EVALSHA where ``client`` is a pipeline)."""
        return self._record(keys=call[0], args=call[1], client=client)
