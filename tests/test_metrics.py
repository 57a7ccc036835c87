"""The metric table of docs/operations.md is exactly what gateways and workers export."""

from __future__ import annotations

import re
from pathlib import Path

import redis

from embedstream.redis_server import RedisServer, free_port
from embedstream.v1 import embedder_pb2 as pb
from tests.conftest import Service
from tests.support import documents
from tests.support.processes import scrape, start_gateway, start_worker, stub

SUFFIXES = ("_bucket", "_sum", "_count")


def exported(port: int) -> set[str]:
    names = set()
    for series in scrape(port):
        name = series.partition("{")[0]
        if not name.startswith("embedstream_") or name.endswith("_created"):  # _created: creation timestamps
            continue
        for suffix in SUFFIXES:
            if name.endswith(suffix):
                name = name[: -len(suffix)]
        names.add(name)
    return names


def documented() -> set[str]:
    rows = documents.table("## Metrics", documents.DOCS / "operations.md")
    return {found.group(1) for row in rows if (found := re.fullmatch(r"`(embedstream_[a-z_]+)`", row[0]))}


def test_every_metric_is_exported_from_start_and_documented(
    service: Service, r: redis.Redis, redis_server: RedisServer, log_dir: Path
) -> None:
    gateway_port, worker_port = free_port(), free_port()
    gateway, port = start_gateway(dict(service.env, EMBEDSTREAM_METRICS_PORT=str(gateway_port)), log_dir)
    worker = start_worker(dict(service.env, EMBEDSTREAM_METRICS_PORT=str(worker_port)), log_dir, "debug", r)
    try:
        with stub(port) as s:
            s.Embed(pb.EmbedRequest(model="debug", inputs=[pb.Input(text="count me")]), timeout=10)
        names = exported(gateway_port) | exported(worker_port)
    finally:
        gateway.stop()
        worker.stop()
    docs = documented()
    assert len(docs) >= 19
    assert docs - names == set(), "documented but not exported"
    assert names - docs == set(), "exported but not in docs/operations.md's metrics table"
