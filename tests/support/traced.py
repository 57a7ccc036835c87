"""What the tracing tests share: a registry of two debug models (one that no worker serves,
so its job chunks can be read raw from its bulk stream), and an environment free of this
machine's OpenTelemetry variables."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
import redis

from embedstream import apikeys, keys
from tests.support.processes import base_env

MODEL = "otel-debug"
#: A model no worker serves: its job chunks stay in its bulk stream to be read raw.
IDLE = "otel-idle"
SECRET = "otel-sentinel-5d1c private words"
TENANT = "tracer"
KEY = apikeys.new_key()

REGISTRY = f"""
default = "{MODEL}"

[models.{MODEL}]
family = "debug"
dimensions = 8

[models.{IDLE}]
family = "debug"
dimensions = 8
"""


def write_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("otel") / "models.toml"
    path.write_text(REGISTRY)
    return path


def plain_env(redis_url: str, registry: Path, **extra: str) -> dict[str, str]:
    """base_env without any OpenTelemetry variable of this machine's environment."""
    env = base_env(redis_url, registry, EMBEDSTREAM_THREADS="1", **extra)
    return {k: v for k, v in env.items() if not k.startswith("OTEL_") or k in extra}


def raw_bulk_entries(r: redis.Redis, job_id: str) -> list[dict[str, object]]:
    """The msgpack maps of a job's chunks as they wait in the idle model's bulk stream."""
    rows = r.xrange(keys.bulk(IDLE))
    maps = [msgpack.unpackb(fields[keys.PAYLOAD.encode()], raw=False) for _, fields in rows]
    return [m for m in maps if m.get("j") == job_id]
