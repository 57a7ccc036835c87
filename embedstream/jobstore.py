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

from typing import Any

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
#: ARGV: chunk, value, inputs, failed (0/1), dimensions, now_ms, error.
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
  if ARGV[5] ~= '0' then redis.call('HSET', KEYS[1], 'dimensions', ARGV[5]) end
end
if state == 1 then redis.call('HSET', KEYS[1], 'state', 2) end
finalize(ARGV[6])
return 1
"""
)

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


#: A stored chunk that succeeded: this prefix, then the worker's reply (``wire.encode_reply``).
RESULT = b"R"


def failure(inputs: int, message: str) -> bytes:
    """The stored value of a chunk whose inputs all failed."""
    return f"E{inputs}:{message}".encode()


def decode_meta(raw: dict[bytes, bytes]) -> dict[str, Any]:
    """The meta hash with text keys and numeric values as ints."""
    out: dict[str, Any] = {}
    for k, v in raw.items():
        key = k.decode()
        text = v.decode()
        out[key] = int(text) if text.lstrip("-").isdigit() else text
    return out
