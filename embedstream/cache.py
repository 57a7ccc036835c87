"""The embedding cache's records: the model fingerprint, the key of one model input, the stored
output, and the budgeted store. One home for the layout that workers write and read.

Not wired into the worker yet (issue 16 part 2): see docs/long-inputs.md "What is not built".
Records live in the queue's Redis under the model's hash tag; every key is bounded by a TTL and
the model's byte budget is enforced by :data:`STORE` (least recently used first), never by Redis
eviction, which could evict queue data.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from embedstream import keys

FORMAT = 1
#: Bytes of each weights file read into the fingerprint (a safetensors header fits).
HEAD_BYTES = 1 << 16

#: Store one record and evict the least recently used beyond the budget.
#: KEYS: record, index, bytes. ARGV: value, ttl_ms, now_ms, budget, member, key prefix.
STORE = """
-- A record that expired leaves its index entry (and its bytes) until evicted: count it once.
if redis.call('EXISTS', KEYS[1]) == 0 and not redis.call('ZSCORE', KEYS[2], ARGV[5]) then
  redis.call('INCRBY', KEYS[3], string.len(ARGV[1]))
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5])
local evicted = 0
while tonumber(redis.call('GET', KEYS[3]) or '0') > tonumber(ARGV[4]) do
  local oldest = redis.call('ZPOPMIN', KEYS[2])
  if #oldest == 0 then break end
  local digest, size = string.match(oldest[1], '^(.*):(%d+)$')
  redis.call('DEL', ARGV[6] .. digest)
  redis.call('DECRBY', KEYS[3], size)
  evicted = evicted + 1
end
return evicted
"""


def fingerprint(family: str, path: str, dtype: str, version: str) -> str:
    """What identifies the weights: family, dtype, version and, for a folder, each file's
    name, size, mtime and first bytes (a safetensors header); computed once at load."""
    h = hashlib.sha256(f"{FORMAT}\0{family}\0{dtype}\0{version}\0{path}".encode())
    root = Path(path)
    if root.is_dir():
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            st = file.stat()
            h.update(f"\0{file.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
            with file.open("rb") as f:
                h.update(f.read(HEAD_BYTES))
    return h.hexdigest()[:32]


def digest(fingerprint: str, normalize: bool, task: str, ids: list[int] | None, text: str) -> str:
    """The key of one model input: everything that changes the model's output for it."""
    body = msgpack.packb([FORMAT, fingerprint, normalize, task, ids, None if ids is not None else text])
    return hashlib.sha256(body).hexdigest()


def encode_output(kind: str, output: Any) -> bytes:
    """One model output (a dense row, a token matrix, a sparse pair) as a record."""
    if kind == "sparse":
        idx, weights = output
        body = [FORMAT, kind, idx.astype("<u4").tobytes(), weights.astype("<f4").tobytes(), 0]
    else:
        arr = np.asarray(output, dtype="<f4")
        body = [FORMAT, kind, arr.tobytes(), b"", arr.shape[-1]]
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


def decode_output(data: bytes) -> Any:
    """The output a record holds; a record of another format raises ValueError."""
    version, kind, first, second, width = msgpack.unpackb(data, raw=False)
    if version != FORMAT:
        raise ValueError(f"cache record format {version!r}")
    if kind == "sparse":
        return np.frombuffer(first, dtype="<u4"), np.frombuffer(second, dtype="<f4")
    values = np.frombuffer(first, dtype="<f4")
    return values.reshape(-1, width) if kind == "multi" else values


class Store:
    """Reads and budgeted writes of one model's records."""

    def __init__(self, redis: Any, model: str, budget_bytes: int, ttl_ms: int) -> None:
        self.redis = redis
        self.model = model
        self.budget = budget_bytes
        self.ttl_ms = ttl_ms
        self._store = redis.register_script(STORE)

    async def get(self, digests: list[str]) -> list[bytes | None]:
        """The records of ``digests`` (None where missing)."""
        if not digests:
            return []
        found: list[bytes | None] = await self.redis.mget([keys.cache_record(self.model, d) for d in digests])
        return found

    async def put(self, digest_: str, value: bytes, now_ms: int) -> int:
        """Store one record; returns how many older records were evicted to stay in budget."""
        names = [keys.cache_record(self.model, digest_), keys.cache_index(self.model), keys.cache_bytes(self.model)]
        prefix = keys.cache_record(self.model, "")
        args = [value, self.ttl_ms, now_ms, self.budget, f"{digest_}:{len(value)}", prefix]
        return int(await self._store(keys=names, args=args))
