"""The embedding cache's records: the model fingerprint, the key of one input, the stored
outputs, and the scripts that read and write them within a byte budget.

Records live in the queue's Redis under the model's hash tag. Every record expires a TTL after
its last use, and the model's byte budget is enforced by :data:`STORE` (least recently used
first), never by Redis eviction, which could evict queue data. Only workers read and write
records (``workers/cached.py``); a key is a hash nobody outside can choose. docs/cache.md.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
from redis.exceptions import OutOfMemoryError, ResponseError

from embedstream import keys, profile
from embedstream.registry import ModelSpec
from embedstream.wire import Job

FORMAT = 1
#: Bytes of each sample of a weights file read into the fingerprint, and samples per file.
SAMPLE_BYTES = 1 << 16
SAMPLES = 16
#: What Redis spends on one record beyond its value (key, expiry, index member), counted in the
#: budget so that it bounds memory, not only payload (measured by tests/test_cache.py).
OVERHEAD = 400
#: Records forgotten per STORE whose TTL ran out (their index members and bytes).
STALE_PER_STORE = 32
#: Above this share of Redis' ``maxmemory`` a STORE keeps nothing and gives back (drops) up to
#: ``GIVE_BACK`` of the model's least recently used records: the cache yields to the queue.
HIGH_WATER = 0.9
GIVE_BACK = 8

#: Read records and mark them used now. KEYS: index, bytes, then the records.
#: ARGV: now_ms, ttl_ms, record key prefix, overhead. Returns each record's value or false.
LOOKUP = """
local found = {}
local now, ttl, overhead = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[4])
local used = false
for i = 3, #KEYS do
  local value = redis.call('GET', KEYS[i])
  found[i - 2] = value
  if value then
    local member = string.sub(KEYS[i], #ARGV[3] + 1) .. ':' .. (string.len(value) + overhead)
    redis.call('ZADD', KEYS[1], 'XX', now, member)
    redis.call('PEXPIRE', KEYS[i], ttl)
    used = true
  end
end
if used then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return found
"""

#: Store one record, forget expired ones, and evict the least recently used beyond the budget;
#: with Redis nearly full, store nothing and drop the oldest records instead.
#: KEYS: record, index, bytes. ARGV: value, ttl_ms, now_ms, budget, digest, record key prefix,
#: overhead, stale records forgotten at most, high water, records given back at most.
#: Returns {records evicted, the model's cache bytes after, 1 stored or 0 not (Redis nearly full)}.
STORE = """
local ttl, now, budget, overhead = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[7])
-- A member out of the index: its bytes leave the count; returns its record's digest.
local function uncount(member)
  local digest, size = string.match(member, '^(.*):(%d+)$')
  redis.call('DECRBY', KEYS[3], size)
  return digest
end
local function evict()
  local oldest = redis.call('ZPOPMIN', KEYS[2])
  if #oldest == 0 then return false end
  redis.call('DEL', ARGV[6] .. uncount(oldest[1]))
  return true
end
-- The queue's memory comes first: near maxmemory the cache shrinks instead of growing.
local memory = redis.call('INFO', 'memory')
local used, max = tonumber(string.match(memory, 'used_memory:(%d+)')), tonumber(string.match(memory, 'maxmemory:(%d+)'))
if max and max > 0 and used > max * tonumber(ARGV[9]) then
  local given = 0
  while given < tonumber(ARGV[10]) and evict() do given = given + 1 end
  return {given, tonumber(redis.call('GET', KEYS[3]) or '0'), 0}
end
-- Records whose TTL ran out left their members (and bytes) behind.
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - ttl, 'LIMIT', 0, tonumber(ARGV[8]))
for _, member in ipairs(stale) do
  if redis.call('EXISTS', ARGV[6] .. string.match(member, '^(.*):%d+$')) == 0 then
    redis.call('ZREM', KEYS[2], member)
    uncount(member)
  end
end
-- A refresh replaces the record stored before under this digest.
local old = redis.call('STRLEN', KEYS[1])
if old > 0 and redis.call('ZREM', KEYS[2], ARGV[5] .. ':' .. (old + overhead)) == 1 then
  uncount(ARGV[5] .. ':' .. (old + overhead))
end
local size = string.len(ARGV[1]) + overhead
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('ZADD', KEYS[2], now, ARGV[5] .. ':' .. size)
local total = redis.call('INCRBY', KEYS[3], size)
local evicted = 0
while total > budget and evict() do
  total = tonumber(redis.call('GET', KEYS[3]))
  evicted = evicted + 1
end
if total < 0 then
  redis.call('SET', KEYS[3], 0)
  total = 0
end
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
return {evicted, total, 1}
"""


def fingerprint(spec: ModelSpec, served: profile.Profile) -> str:
    """What identifies the model's outputs, computed once at load: its registry entry's
    output-changing fields, how it is served (the profile), and for a folder each file's
    name, size and evenly spaced samples of its bytes (not its path or times, so that copies of
    one folder on several machines share a cache)."""
    root = Path(spec.path) if spec.path else None
    folder = root is not None and root.is_dir()
    # A folder is known by its files, wherever it lies (an hf: snapshot's path holds the user's home).
    entry = {k: v for k, v in asdict(spec).items() if k in IDENTITY and not (folder and k == "path")}
    h = hashlib.sha256(msgpack.packb([FORMAT, entry, profile.encode(served)]))
    if root is not None and folder:
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            name = file.relative_to(root)
            if any(part.startswith(".") for part in name.parts):
                continue  # .git, .cache (download metadata holds times): not the model
            size = file.stat().st_size
            h.update(f"\0{name}\0{size}".encode())
            with file.open("rb") as f:
                for i in range(SAMPLES):
                    f.seek(size * i // SAMPLES)
                    h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()[:32]


#: ModelSpec fields that change what the model computes (the rest say how it is scheduled).
IDENTITY = (
    "name",
    "family",
    "path",
    "device",
    "dtype",
    "version",
    "max_input_tokens",
    "dimensions",
    "pooling",
    "normalize",
    "backend",
    "instruction",
    "triggers",
)


def digest(fingerprint: str, job: Job, normalize: bool, prompt: str, source: str | bytes | list[int]) -> str:
    """The key of one input: the model, the caller's scope, every option that changes what the
    model computes for it (which end a cut keeps among them), and the input (a text, an encoded
    image or token ids: msgpack keeps the three apart). Options applied after the model (output type, sparse
    token strings, chunks or pooled) are not in it: one record serves them all, byte for byte."""
    chunking = [job.chunk_tokens, job.chunk_overlap] if job.chunking else None
    body = [FORMAT, fingerprint, job.cache_scope, normalize, job.input_type, job.prompt, prompt, job.truncate]
    body += [job.dimensions, chunking, job.query, job.truncation_side, list(job.outputs), source]
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return hashlib.sha256(packed).hexdigest()


@dataclass(frozen=True, slots=True)
class Part:
    """One model input an input became (itself, or one of its chunks): its output and costs."""

    output: Any
    #: Tokens the model read, and whether the input was cut.
    length: int
    truncated: bool
    #: Chunking: (token start, token end, char start, char end) in the input; None without.
    span: tuple[int, int, int, int] | None = None


def encode_record(kind: str, parts: list[Part]) -> bytes:
    """The stored value of one input's outputs (a dense row, a token matrix or a sparse pair each)."""
    body: list[Any] = [FORMAT, kind]
    for part in parts:
        if kind == "sparse":
            idx, weights = part.output
            first, second, width = idx.astype("<u4").tobytes(), weights.astype("<f4").tobytes(), 0
        else:
            arr = np.asarray(part.output, dtype="<f4")
            first, second, width = arr.tobytes(), b"", arr.shape[-1]
        body.append([part.length, part.truncated, part.span, first, second, width])
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


def decode_record(data: bytes, kind: str) -> list[Part] | None:
    """The parts a stored value holds; None for one of another format or kind, or corrupt."""
    try:
        version, stored, *rows = msgpack.unpackb(data, raw=False)
        if version != FORMAT or stored != kind or not rows:
            return None
        parts = []
        for length, truncated, span, first, second, width in rows:
            if kind == "sparse":
                output: Any = (np.frombuffer(first, dtype="<u4"), np.frombuffer(second, dtype="<f4"))
            else:
                values = np.frombuffer(first, dtype="<f4")
                output = values.reshape(-1, width) if kind == "multi" else values
            parts.append(Part(output, int(length), bool(truncated), None if span is None else tuple(span)))
        return parts
    except (ValueError, TypeError):
        return None


class Store:
    """Reads and budgeted writes of one model's records."""

    def __init__(self, redis: Any, model: str, budget_bytes: int, ttl_ms: int) -> None:
        self.redis = redis
        self.model = model
        self.budget = budget_bytes
        self.ttl_ms = ttl_ms
        self.prefix = keys.cache_record(model, "")
        self._lookup = redis.register_script(LOOKUP)
        self._store = redis.register_script(STORE)

    async def get(self, digests: list[str], now_ms: int) -> list[bytes | None]:
        """The records of ``digests`` (None where missing), each marked used now: one round trip.
        While Redis is over ``maxmemory`` it refuses the marks (ZADD is denied on OOM), and the
        records are read without them."""
        if not digests:
            return []
        names = [keys.cache_index(self.model), keys.cache_bytes(self.model)]
        names += [keys.cache_record(self.model, d) for d in digests]
        try:
            found = await self._lookup(keys=names, args=[now_ms, self.ttl_ms, self.prefix, OVERHEAD])
        except ResponseError as exc:
            if not isinstance(exc, OutOfMemoryError) and not str(exc).startswith("OOM"):
                raise
            found = await self.redis.mget(names[2:])
        return [value or None for value in found]

    def put(self, digest_: str, value: bytes, now_ms: int, client: Any = None) -> Any:
        """Store one record (an awaitable of [evicted, bytes after, stored]; queued where ``client``
        is a pipeline)."""
        names = [keys.cache_record(self.model, digest_), keys.cache_index(self.model), keys.cache_bytes(self.model)]
        args = [value, self.ttl_ms, now_ms, self.budget, digest_, self.prefix, OVERHEAD, STALE_PER_STORE]
        args += [HIGH_WATER, GIVE_BACK]
        return self._store(keys=names, args=args, client=client)
