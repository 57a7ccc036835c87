"""The Python client SDK against the running service."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from embedstream.client import AsyncClient, Client, Retry
from embedstream.redis_server import free_port
from embedstream.v1 import jobs_pb2 as jpb
from embedstream.workers.debug import debug_vectors
from tests.conftest import Service
from tests.support.corpora import texts
from tests.support.processes import Proc


def test_embed_any_length_equals_reference(service: Service, reference: object) -> None:
    corpus = texts(300, seed=21)
    with Client(f"127.0.0.1:{service.port}") as client:
        got = client.embed(corpus)
        models = {m.name for m in client.list_models()}
    assert got.shape == (300, 384) and got.dtype == np.float32
    assert np.abs(got - reference.encode(corpus)).max() <= 1e-4  # type: ignore[attr-defined]
    assert "all-MiniLM-L6-v2" in models


def test_embed_stream_is_lazy_ordered_and_correct(service: Service) -> None:
    corpus = texts(3000, seed=22)
    produced = [0]

    def lazily() -> Iterator[str]:
        for text in corpus:
            produced[0] += 1
            yield text

    ahead = 0
    consumed = 0
    with Client(f"127.0.0.1:{service.port}", model="debug") as client:
        for block in client.embed_stream(lazily(), batch_size=50, window=500):
            expected = debug_vectors(corpus[consumed : consumed + len(block)], 64, [True] * len(block))
            assert np.abs(block - expected).max() <= 1e-6
            consumed += len(block)
            ahead = max(ahead, produced[0] - consumed)
    assert consumed == 3000
    assert ahead <= 500 + 2 * 50


def test_retries_resource_exhausted_until_served(service: Service) -> None:
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def call(i: int) -> None:
        try:
            with Client(f"127.0.0.1:{service.port}", retry=Retry(attempts=40, max_s=0.5)) as client:
                results.append(client.embed([f"text {i}"], model="slow"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 8


def test_gives_up_after_its_retries(service: Service) -> None:
    with Client(f"127.0.0.1:{service.port}", retry=Retry(attempts=3, max_s=0.01)) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.embed(["x"], model="orphan")
        with pytest.raises(TypeError):
            client.embed("not a list")  # type: ignore[arg-type]
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_async_client(service: Service) -> None:
    corpus = texts(600, seed=23)

    async def run() -> tuple[np.ndarray, list[np.ndarray]]:
        async with AsyncClient(f"127.0.0.1:{service.port}", model="debug") as client:
            whole = await client.embed(corpus)
            blocks = [b async for b in client.embed_stream(iter(corpus), batch_size=100, window=300)]
            return whole, blocks

    whole, blocks = asyncio.run(run())
    expected = debug_vectors(corpus, 64, [True] * 600)
    assert np.abs(whole - expected).max() <= 1e-6
    assert np.abs(np.concatenate(blocks) - expected).max() <= 1e-6


def test_stream_survives_a_gateway_restart(service: Service, log_dir: Path) -> None:
    port = free_port()
    env = dict(service.env, EMBEDSTREAM_PORT=str(port))
    gateway = Proc("gateway-restart", ["gateway"], env, log_dir)
    corpus = texts(4000, seed=24)
    seen = 0
    try:
        with Client(f"127.0.0.1:{port}", model="debug", retry=Retry(attempts=60, max_s=0.5)) as client:
            for block in client.embed_stream(iter(corpus), batch_size=20, window=200):
                expected = debug_vectors(corpus[seen : seen + len(block)], 64, [True] * len(block))
                assert np.abs(block - expected).max() <= 1e-6
                seen += len(block)
                if seen == 1000:
                    gateway.signal(signal.SIGKILL)
                    gateway.kill()
                    gateway = Proc("gateway-restart", ["gateway"], env, log_dir)
    finally:
        gateway.stop()
    assert seen == 4000


def test_job_handles_upload_wait_with_progress_and_results(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = texts(5000, seed=25)
    with Client(f"127.0.0.1:{service.port}", model="debug") as client:
        handle = client.upload_job(iter(corpus), chunk_size=700)
        done = handle.wait(progress=True, timeout=120)
        pairs = list(client.job(handle.id).results())
        tail = list(handle.results(offset=4990))
        small = client.submit_job(corpus[:10], idempotency_key="client-test")
        again = client.submit_job(corpus[:10], idempotency_key="client-test")
    assert done.state == jpb.JOB_STATE_SUCCEEDED and done.inputs_done == 5000
    assert [i for i, _ in pairs] == list(range(5000))
    assert np.abs(np.stack([v for _, v in pairs]) - debug_vectors(corpus, 64, [True] * 5000)).max() <= 1e-6
    assert [i for i, _ in tail] == list(range(4990, 5000))
    assert small.id == again.id
    err = capsys.readouterr().err
    assert "5000/5000" in err and "inputs/s" in err


def test_job_handle_cancel(service: Service) -> None:
    with Client(f"127.0.0.1:{service.port}", model="jobslow") as client:
        handle = client.submit_job([f"t{i}" for i in range(64 * 30)])
        cancelled = handle.cancel()
        final = handle.wait(timeout=10)
    assert cancelled.state == final.state == jpb.JOB_STATE_CANCELLED
    assert final.inputs_done < 64 * 30


def test_async_job_handles(service: Service) -> None:
    corpus = texts(700, seed=26)

    async def run() -> tuple[jpb.Job, list[tuple[int, np.ndarray]], jpb.Job]:
        async with AsyncClient(f"127.0.0.1:{service.port}", model="debug") as client:
            handle = await client.upload_job(iter(corpus), chunk_size=300)
            done = await handle.wait()
            pairs = [p async for p in (await client.job(handle.id)).results(offset=100)]
            slow = await client.submit_job(["x"] * 64 * 20, model="jobslow")
            return done, pairs, await slow.cancel()

    done, pairs, cancelled = asyncio.run(run())
    assert done.state == jpb.JOB_STATE_SUCCEEDED and done.inputs_done == 700
    assert [i for i, _ in pairs] == list(range(100, 700))
    assert np.abs(np.stack([v for _, v in pairs]) - debug_vectors(corpus[100:], 64, [True] * 600)).max() <= 1e-6
    assert cancelled.state == jpb.JOB_STATE_CANCELLED


def test_client_imports_without_torch() -> None:
    import subprocess
    import sys

    code = "import sys, embedstream.client; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
