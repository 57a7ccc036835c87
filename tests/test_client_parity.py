"""Client and AsyncClient are twins: the same methods and parameters, and the same answers."""

from __future__ import annotations

import asyncio
import inspect
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from embedstream.workers.debug import debug_vectors

from embedstream.client import AsyncClient, AsyncJobHandle, Client, JobHandle, Retry
from embedstream.redis_server import free_port
from tests.conftest import Service
from tests.support.corpora import texts
from tests.support.processes import Proc

TWINS = [(Client, AsyncClient), (JobHandle, AsyncJobHandle)]
CONTEXT = {"__enter__": "__aenter__", "__exit__": "__aexit__"}


def public(cls: type) -> dict[str, Any]:
    """The methods and properties a caller sees, the context manager's under the sync names."""
    names = [n for n in vars(cls) if not n.startswith("_") or n in CONTEXT or n in CONTEXT.values()]
    return {({v: k for k, v in CONTEXT.items()}.get(n, n)): vars(cls)[n] for n in names}


def shape(member: Any) -> Any:
    """A member's parameters (name, kind, default), or "property"; annotations may differ."""
    if isinstance(member, property):
        return "property"
    if not callable(member):
        return member
    return [(p.name, p.kind, p.default) for p in inspect.signature(member).parameters.values()]


@pytest.mark.parametrize(("sync", "aio"), TWINS, ids=[s.__name__ for s, _ in TWINS])
def test_the_twins_have_the_same_methods_and_parameters(sync: type, aio: type) -> None:
    ours, theirs = public(sync), public(aio)
    assert sorted(ours) == sorted(theirs)
    for name, member in ours.items():
        assert shape(member) == shape(theirs[name]), name
        if callable(member) and name != "__init__":
            twin = theirs[name]
            awaited = inspect.iscoroutinefunction(twin) or inspect.isasyncgenfunction(twin)
            assert awaited, f"{aio.__name__}.{name} is neither a coroutine nor an async iterator"


def restart_midway(port: int, env: dict[str, str], log_dir: Path, after: int) -> Iterator[Callable[[int], None]]:
    """A gateway on ``port``; the callback, given how many texts came back, kills and restarts it once."""
    gateway = [Proc("gateway-parity", ["gateway", "--port", str(port)], env, log_dir)]

    def seen(count: int) -> None:
        if count == after:
            gateway[0].signal(signal.SIGKILL)
            gateway[0].kill()
            gateway[0] = Proc("gateway-parity", ["gateway", "--port", str(port)], env, log_dir)

    try:
        yield seen
    finally:
        gateway[0].stop()


def through_sync(service: Service, corpus: list[str], log_dir: Path) -> dict[str, Any]:
    port = free_port()
    out: dict[str, Any] = {}
    with Client(f"127.0.0.1:{service.port}", model="debug") as client:
        out["embed"] = client.embed(corpus[:300], normalize=False, truncate=True)
        out["models"] = sorted(m.name for m in client.list_models())
        job = client.submit_job(corpus[:50], normalize=False, idempotency_key="parity-sync")
        job.wait(timeout=60)
        out["job"] = np.stack([v for _, v in job.results()])
        out["upload"] = client.upload_job(iter(corpus[:40]), chunk_size=7).wait(timeout=60).inputs_done
    blocks: list[np.ndarray] = []
    with Client(f"127.0.0.1:{port}", model="debug", retry=Retry(attempts=60, max_s=0.5)) as client:
        for seen in restart_midway(port, service.env, log_dir, after=400):
            for block in client.embed_stream(iter(corpus), batch_size=20, window=200, normalize=False):
                blocks.append(block)
                seen(sum(map(len, blocks)))
    out["stream"] = np.concatenate(blocks)
    return out


async def through_async(service: Service, corpus: list[str], log_dir: Path) -> dict[str, Any]:
    port = free_port()
    out: dict[str, Any] = {}
    async with AsyncClient(f"127.0.0.1:{service.port}", model="debug") as client:
        out["embed"] = await client.embed(corpus[:300], normalize=False, truncate=True)
        out["models"] = sorted(m.name for m in await client.list_models())
        job = await client.submit_job(corpus[:50], normalize=False, idempotency_key="parity-async")
        await job.wait(timeout=60)
        out["job"] = np.stack([v async for _, v in job.results()])
        out["upload"] = (await (await client.upload_job(iter(corpus[:40]), chunk_size=7)).wait(timeout=60)).inputs_done
    blocks: list[np.ndarray] = []
    async with AsyncClient(f"127.0.0.1:{port}", model="debug", retry=Retry(attempts=60, max_s=0.5)) as client:
        for seen in restart_midway(port, service.env, log_dir, after=400):
            async for block in client.embed_stream(iter(corpus), batch_size=20, window=200, normalize=False):
                blocks.append(block)
                seen(sum(map(len, blocks)))
    out["stream"] = np.concatenate(blocks)
    return out


def test_both_clients_give_the_same_answers_and_survive_a_broken_stream(service: Service, log_dir: Path) -> None:
    corpus = texts(1200, seed=31)
    ours = through_sync(service, corpus, log_dir)
    theirs = asyncio.run(through_async(service, corpus, log_dir))
    assert sorted(ours) == sorted(theirs)
    for name in ours:
        assert np.array_equal(ours[name], theirs[name]), name
    raw = debug_vectors(corpus, 64, [False] * len(corpus))
    assert np.abs(ours["stream"] - raw).max() <= 1e-6  # every text once, in order, left unnormalized
    assert np.abs(ours["embed"] - raw[:300]).max() <= 1e-6
    assert ours["upload"] == 40
