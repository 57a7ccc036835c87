"""The load-failure record: why a model's worker could not load it.

A worker that cannot load its model (missing or unexpected weights, a missing
package, a failed self-test) writes this record before it exits 2, so the
gateway can show the model as failed in ListModels and health and answer its
callers FAILED_PRECONDITION with the reason instead of "retry shortly". The
first worker of the model that starts serving clears it; otherwise it expires
after :data:`TTL_S`, so a forgotten failure does not outlive the operator's fix.
Layout (one JSON string at ``keys.load_failure``): ``{"v": 1, "reason", "worker", "at_ms"}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from embedstream import clock, keys

#: Seconds a failure record lives unless a serving worker clears it first.
TTL_S = 24 * 3600
VERSION = 1


@dataclass(frozen=True, slots=True)
class LoadFailure:
    """Why a model failed to load, where and when."""

    reason: str
    worker: str = ""
    at_ms: int = 0


def encode(failure: LoadFailure) -> str:
    """The record's stored form."""
    return json.dumps({"v": VERSION, "reason": failure.reason, "worker": failure.worker, "at_ms": failure.at_ms})


def decode(raw: bytes | str | None) -> LoadFailure | None:
    """The stored record, or None where there is none (or it is unreadable)."""
    if not raw:
        return None
    try:
        body = json.loads(raw)
        return LoadFailure(str(body["reason"]), str(body.get("worker", "")), int(body.get("at_ms", 0)))
    except (ValueError, KeyError, TypeError):
        return None


def record(redis: Any, model: str, reason: str, worker: str) -> Any:
    """Store why ``model`` failed to load (a sync client's result, an awaitable, or queued on a pipeline)."""
    failure = LoadFailure(reason, worker, int(clock.now_ms()))
    return redis.set(keys.load_failure(model), encode(failure), ex=TTL_S)


def clear(redis: Any, model: str) -> Any:
    """Forget ``model``'s failure: a worker of it serves now."""
    return redis.delete(keys.load_failure(model))


def read(redis: Any, model: str) -> Any:
    """The raw record of ``model`` (see :func:`decode`)."""
    return redis.get(keys.load_failure(model))
