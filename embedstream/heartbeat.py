"""The worker heartbeat: who serves a model, and what that model is.

Each worker scores its name in the model's live set (``keys.workers``) with the
time of its last beat, and publishes the model's shape in ``keys.model_info``.
Workers write it; the gateway's directory counts live workers and reads the
shape; recovery spares the consumers of live workers. A worker is live while
its last beat is younger than the liveness window the reader chooses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from embedstream import clock, keys, profile
from embedstream.profile import Profile

#: Members silent this long are pruned from the live set by any beat.
FORGET_MS = 60_000
#: The streams of work this version's workers read (``keys.lanes``).
LANES = 3


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a worker publishes about its model."""

    family: str = ""
    output: str = ""
    dimensions: int = 0
    max_input_tokens: int = 0
    normalizes: bool = False
    #: How the model is served (:mod:`embedstream.profile`), rewritten with every beat.
    profile: Profile | None = None
    #: How many of the model's streams (``keys.lanes``) its workers read: 3 (calls, stream
    #: requests, job chunks) since stream requests have their own; 2 where a worker predates
    #: it, and the gateway then puts stream requests on the call stream.
    lanes: int = LANES


# One beat: score the worker, prune the long silent, publish the model's info. allow-oom (Redis 7):
# a beat moves a score and rewrites the same few fields, so it grows nothing, and a worker that
# could not beat while Redis is full would look dead to every gateway (UNAVAILABLE, not the
# RESOURCE_EXHAUSTED that says what is wrong). KEYS: live set, info. ARGV: now ms, worker,
# forget ms, the encoded profile ('' for none; KEYS[3], kept a day past the last beat so no key stays
# forever), then the info's field, value pairs.
BEAT = """#!lua flags=allow-oom
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, tonumber(ARGV[1]) - tonumber(ARGV[3]))
if ARGV[4] ~= '' then redis.call('SET', KEYS[3], ARGV[4], 'PX', 86400000) end
redis.call('HSET', KEYS[2], unpack(ARGV, 5))
return 0
"""


class Beat:
    """Writes the heartbeats of one worker, which serves one model."""

    def __init__(self, redis: Any, model: str, worker: str, info: ModelInfo) -> None:
        self._script = redis.register_script(BEAT)
        self.model = model
        self.worker = worker
        self._profile = profile.encode(info.profile) if info.profile is not None else ""
        self._info = [
            *("family", info.family, "output", info.output, "dimensions", info.dimensions),
            *("max_input_tokens", info.max_input_tokens, "normalizes", int(info.normalizes)),
            *("lanes", info.lanes),
        ]

    async def __call__(self) -> None:
        """Write one heartbeat."""
        now = int(clock.now_ms())
        await self._script(
            keys=[keys.workers(self.model), keys.model_info(self.model), keys.profile(self.model)],
            args=[now, self.worker, FORGET_MS, self._profile, *self._info],
        )


def leave(redis: Any, model: str, worker: str) -> Any:
    """Take ``worker`` out of ``model``'s live set (an awaitable, or queued on a pipeline)."""
    return redis.zrem(keys.workers(model), worker)


def count_live(redis: Any, model: str, liveness_s: float) -> Any:
    """How many workers of ``model`` beat within ``liveness_s`` (an awaitable, or queued on a pipeline)."""
    return redis.zcount(keys.workers(model), _cutoff(liveness_s), "+inf")


async def live(redis: Any, model: str, liveness_s: float) -> set[str]:
    """The names of ``model``'s workers that beat within ``liveness_s``."""
    members = await redis.zrangebyscore(keys.workers(model), _cutoff(liveness_s), "+inf")
    return {m.decode() if isinstance(m, bytes) else str(m) for m in members}


def read_info(redis: Any, model: str) -> Any:
    """The raw info hash of ``model`` (an awaitable, or queued on a pipeline); see :func:`decode_info`."""
    return redis.hgetall(keys.model_info(model))


def decode_info(raw: dict[bytes, bytes]) -> ModelInfo | None:
    """The published info, or None where no worker has published any yet."""
    if not raw:
        return None
    return ModelInfo(
        family=raw.get(b"family", b"").decode(),
        output=raw.get(b"output", b"").decode(),
        dimensions=int(raw.get(b"dimensions", 0)),
        max_input_tokens=int(raw.get(b"max_input_tokens", 0)),
        normalizes=raw.get(b"normalizes") == b"1",
        lanes=int(raw.get(b"lanes", 2)),
    )


def _cutoff(liveness_s: float) -> float:
    return clock.now_ms() - liveness_s * 1000
