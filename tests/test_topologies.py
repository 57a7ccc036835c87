"""End to end on a real 3-primary Redis Cluster, and through a real Sentinel failover."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from embedstream import keys
from embedstream.client import Client, Retry
from embedstream.v1 import embedder_pb2 as pb
from embedstream.workers.debug import DEBUG_RAISE, debug_vectors
from tests.support.processes import Proc, base_env, start_gateway, stub, wait_until
from tests.support.topologies import Cluster, SentinelGroup

CANDIDATES = [f"shard-{c}" for c in "abcdefghijklmnop"]
DIMS = 16


def expected(texts: list[str]) -> np.ndarray:
    return debug_vectors(texts, DIMS, [True] * len(texts))


def registry(path: Path, models: list[str]) -> Path:
    text = f'default = "{models[0]}"\n'
    for name in models:
        text += f'\n[models."{name}"]\nfamily = "debug"\ndimensions = {DIMS}\nlatency_ms = 5\ntriggers = true\n'
    path.write_text(text)
    return path


def worker(env: dict[str, str], log_dir: Path, model: str) -> Proc:
    return Proc(f"worker-{model}", ["worker", "--model", model], env, log_dir)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("cluster")).start()
    yield c
    c.stop()


def test_end_to_end_on_a_three_primary_redis_cluster(cluster: Cluster, tmp_path: Path, log_dir: Path) -> None:
    # One model on each shard: every key of a model shares its {m:<model>} hash tag.
    models: dict[int, str] = {}
    for name in CANDIDATES:
        models.setdefault(cluster.node_of(keys.queue(name)), name)
    assert sorted(models) == [0, 1, 2]
    names = [models[i] for i in range(3)]
    env = base_env(
        cluster.url,
        registry(tmp_path / "models.toml", names),
        EMBEDSTREAM_VISIBILITY_TIMEOUT_S="1.5",
        EMBEDSTREAM_HEARTBEAT_S="0.2",
        EMBEDSTREAM_MAX_DELIVERIES="2",
    )
    gateway, port = start_gateway(env, log_dir)
    workers = {name: worker(env, log_dir, name) for name in names}
    spare = worker(env, log_dir, names[0])
    r = cluster.client()
    try:
        wait_until(
            lambda: all(r.zcard(keys.workers(n)) >= 1 for n in names) and r.zcard(keys.workers(names[0])) >= 2,
            90,
            what="workers on every shard",
        )
        with Client(f"127.0.0.1:{port}") as client:
            for name in names:
                texts = [f"{name} text {i}" for i in range(40)]
                assert np.abs(client.embed(texts, model=name) - expected(texts)).max() < 1e-6
            stream_texts = [f"stream {i}" for i in range(2000)]
            got = np.concatenate(list(client.embed_stream(stream_texts, model=names[1], batch_size=16)))
            assert np.abs(got - expected(stream_texts)).max() < 1e-6
            job_texts = [f"job {i}" for i in range(1000)]
            handle = client.upload_job(job_texts, model=names[2], idempotency_key="cluster-job")
            assert client.upload_job(job_texts, model=names[2], idempotency_key="cluster-job").id == handle.id
            handle.wait(timeout=60)
            vecs = np.stack([v for _, v in handle.results()])
            assert np.abs(vecs - expected(job_texts)).max() < 1e-6

        # Poison: dead-lettered on its shard, its caller told, the rest of the batch answered.
        with stub(port) as s, pytest.raises(grpc.RpcError) as err:
            s.Embed(pb.EmbedRequest(model=names[0], inputs=[pb.Input(text=f"x {DEBUG_RAISE}")]), timeout=10)
        assert err.value.code() == grpc.StatusCode.INTERNAL and "dead-lettered" in (err.value.details() or "")
        assert r.xlen(keys.dead_letters(names[0])) == 1

        # kill -9 of one of a model's two workers mid-stream: the other reclaims, nothing lost.
        victim = workers[names[0]]
        texts = [f"reclaim {i}" for i in range(3000)]
        results: list[np.ndarray] = []
        reader = threading.Thread(
            target=lambda: results.extend(
                Client(f"127.0.0.1:{port}").embed_stream(texts, model=names[0], batch_size=8, window=256)
            )
        )
        reader.start()
        wait_until(lambda: len(results) > 20, 30, what="the stream to run")
        victim.signal(signal.SIGKILL)
        reader.join(120)
        got = np.concatenate(results)
        assert got.shape == (len(texts), DIMS) and np.abs(got - expected(texts)).max() < 1e-6
        wait_until(lambda: r.xpending(keys.queue(names[0]), keys.GROUP)["pending"] == 0, 20, what="no pending")
        assert all(p.alive() for p in (gateway, spare, workers[names[1]], workers[names[2]]))
    finally:
        r.close()
        gateway.stop()
        for proc in [*workers.values(), spare]:
            proc.stop()


def test_sentinel_failover_under_load_loses_no_accepted_job(tmp_path: Path, log_dir: Path) -> None:
    group = SentinelGroup(tmp_path / "sentinel").start()
    env = base_env(
        group.url,
        registry(tmp_path / "models.toml", ["failover"]),
        EMBEDSTREAM_REDIS_MIN_REPLICAS="1",  # the write-safety setting: a replica holds every accepted job
        EMBEDSTREAM_REDIS_TIMEOUT_S="1",
    )
    gateway, port = start_gateway(env, log_dir)
    proc = worker(env, log_dir, "failover")
    accepted: dict[str, list[str]] = {}
    refused = 0
    stop = threading.Event()

    def submit() -> None:
        nonlocal refused
        patient = Retry(attempts=30, initial_s=0.1, max_s=1.0)
        with Client(f"127.0.0.1:{port}", model="failover", retry=patient) as client:
            k = 0
            while not stop.is_set():
                texts = [f"job {k} text {i}" for i in range(100)]
                try:
                    handle = client.submit_job(texts, idempotency_key=f"load-{k}")
                    accepted[handle.id] = texts
                except grpc.RpcError:
                    refused += 1
                k += 1

    try:
        wait_until(lambda: _serving(port), 60, what="the worker")
        thread = threading.Thread(target=submit)
        thread.start()
        wait_until(lambda: len(accepted) >= 5, 60, what="jobs accepted before the failover")
        old_primary = group.primary.port
        assert group.primary.proc is not None
        group.primary.kill()  # kill -9: no shutdown, whatever it had not replicated is gone
        killed = time.monotonic()
        wait_until(lambda: group.master_port() != old_primary, 30, what="the Sentinel to promote the replica")
        promoted = time.monotonic() - killed
        # With no replica left, min_replicas=1 refuses new jobs; the old primary comes back
        # and the Sentinel makes it the new primary's replica.
        group.primary.start()
        count = len(accepted)
        wait_until(lambda: len(accepted) >= count + 5, 60, what="jobs accepted after the failover")
        stop.set()
        thread.join(60)
        with Client(f"127.0.0.1:{port}", model="failover", retry=Retry(attempts=20, max_s=1.0)) as client:
            for job_id, texts in accepted.items():
                handle = client.job(job_id)
                handle.wait(timeout=60)
                vecs = np.stack([v for _, v in handle.results()])
                assert vecs.shape == (len(texts), DIMS) and np.abs(vecs - expected(texts)).max() < 1e-6, job_id
        print(
            f"SENTINEL failover: {len(accepted)} jobs accepted, all complete; promotion took {promoted:.1f} s; "
            f"{refused} submissions refused during it"
        )
        assert gateway.alive() and proc.alive()
    finally:
        stop.set()
        gateway.stop()
        proc.stop()
        group.stop()


def _serving(port: int) -> bool:
    try:
        with stub(port) as s:
            models = s.ListModels(pb.ListModelsRequest(), timeout=2).models
        return all(m.serving for m in models)
    except grpc.RpcError:
        return False


def test_redis_urls_of_every_topology_are_checked() -> None:
    from embedstream.connections import connect
    from embedstream.errors import ConfigError

    with pytest.raises(ConfigError, match="service"):
        connect("redis+sentinel://127.0.0.1:26379", 1.0)
    with pytest.raises(ConfigError, match="host:port"):
        connect("redis+cluster://127.0.0.1:7000,nonsense", 1.0)
