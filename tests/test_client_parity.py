"""Client and AsyncClient are twins: the same methods and parameters, and the same answers."""

from __future__ import annotations

import asyncio
import inspect
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import redis

from embedstream.client import AsyncClient, AsyncJobHandle, Client, EmbedstreamError, JobHandle, Retry, SparseVector
from embedstream.redis_server import RedisServer, free_port
from embedstream.v1 import embedder_pb2 as pb
from embedstream.workers.debug import debug_vectors
from tests.conftest import Service
from tests.support import tinymodels
from tests.support.corpora import texts
from tests.support.processes import Proc, base_env, start_gateway, start_workers, stub, wait_until

TEXTS = ["a photo of a cat", "Redis streams hold the queue.", "embedding models turn text into vectors, fast!"]

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


@dataclass
class Tiny:
    """A gateway serving a tiny SPLADE and ColBERT, one whose Redis is gone, and a port nobody listens on."""

    port: int
    down: int
    closed: int


@pytest.fixture(scope="module")
def tiny(redis_server: RedisServer, r: redis.Redis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tiny]:
    root = tmp_path_factory.mktemp("tiny-parity")
    _, registry = tinymodels.sparse_and_colbert(root)
    (root / "models.toml").write_text(registry)
    env = base_env(redis_server.url, root / "models.toml", EMBEDSTREAM_THREADS="1")
    gateway, port = start_gateway(env, root)
    workers = start_workers(env, root, ["splade", "colbert"], r)
    lost = dict(env, EMBEDSTREAM_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    orphan, down = start_gateway(lost, root)
    with stub(port) as s:
        wait_until(lambda: all(m.serving for m in s.ListModels(pb.ListModelsRequest()).models), 10, what="serving")
    yield Tiny(port, down, free_port())
    for proc in [gateway, orphan, *workers.values()]:
        proc.stop()


def failures(calls: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Each call's error: its type's name, whether it is a grpc.RpcError, its status and its one line."""
    out: dict[str, Any] = {}
    for name, call in calls.items():
        try:
            call()
        except Exception as exc:
            out[name] = (type(exc).__name__, isinstance(exc, grpc.RpcError), exc.code().name, str(exc))  # type: ignore[attr-defined]
    return out


def families_sync(tiny: Tiny) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with Client(f"127.0.0.1:{tiny.port}") as client:
        out["sparse"] = client.embed(TEXTS, model="splade")
        out["sparse_stream"] = [v for block in client.embed_stream(TEXTS, batch_size=2, model="splade") for v in block]
        out["multi_document"] = client.embed(TEXTS, model="colbert", input_type="document")
        out["multi_query"] = client.embed(TEXTS, model="colbert", input_type="query")
        out["multi_stream"] = [v for block in client.embed_stream(TEXTS, batch_size=2, model="colbert") for v in block]
        job = client.submit_job(TEXTS, model="splade", idempotency_key="tiny-sync")
        job.wait(timeout=60)
        out["sparse_job"] = [v for _, v in job.results()]
        out["errors"] = failures({"unknown model": lambda: client.embed(["x"], model="nope")})
    retry = Retry(attempts=2, max_s=0.01)
    for name, port in (("refused", tiny.closed), ("not serving", tiny.down)):
        with Client(f"localhost:{port}", retry=retry) as client:
            out["errors"] |= failures({name: lambda c=client: c.embed(["x"])})  # type: ignore[misc]
    return out


async def families_async(tiny: Tiny) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with AsyncClient(f"127.0.0.1:{tiny.port}") as client:
        out["sparse"] = await client.embed(TEXTS, model="splade")
        out["sparse_stream"] = [
            v async for block in client.embed_stream(TEXTS, batch_size=2, model="splade") for v in block
        ]
        out["multi_document"] = await client.embed(TEXTS, model="colbert", input_type="document")
        out["multi_query"] = await client.embed(TEXTS, model="colbert", input_type="query")
        out["multi_stream"] = [
            v async for block in client.embed_stream(TEXTS, batch_size=2, model="colbert") for v in block
        ]
        job = await client.submit_job(TEXTS, model="splade", idempotency_key="tiny-async")
        await job.wait(timeout=60)
        out["sparse_job"] = [v async for _, v in job.results()]
        out["errors"] = await afailures({"unknown model": lambda: client.embed(["x"], model="nope")})
    retry = Retry(attempts=2, max_s=0.01)
    for name, port in (("refused", tiny.closed), ("not serving", tiny.down)):
        async with AsyncClient(f"localhost:{port}", retry=retry) as aclient:
            out["errors"] |= await afailures({name: lambda c=aclient: c.embed(["x"])})  # type: ignore[misc]
    return out


async def afailures(calls: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """:func:`failures` of awaited calls."""
    out: dict[str, Any] = {}
    for name, call in calls.items():
        try:
            await call()
        except Exception as exc:
            out[name] = (type(exc).__name__, isinstance(exc, grpc.RpcError), exc.code().name, str(exc))  # type: ignore[attr-defined]
    return out


def same(a: Any, b: Any) -> bool:
    """Equal results to float tolerance (batch-mates change the last bits): arrays, lists, SparseVectors."""
    if isinstance(a, list) and a and not isinstance(a[0], str):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.shape == b.shape and np.allclose(a, b, atol=1e-5)
    if isinstance(a, SparseVector):
        return isinstance(b, SparseVector) and np.array_equal(a.indices, b.indices) and same(a.values, b.values)
    return bool(a == b)


def test_both_clients_return_sparse_and_multi_vector_results_and_one_error_type(tiny: Tiny) -> None:
    ours = families_sync(tiny)
    theirs = asyncio.run(families_async(tiny))
    assert sorted(ours) == sorted(theirs)
    for name in ours:
        assert same(ours[name], theirs[name]), name
    with stub(tiny.port) as s:
        sparse = s.Embed(pb.EmbedRequest(model="splade", inputs=[pb.Input(text=t) for t in TEXTS]))
        multi = s.Embed(
            pb.EmbedRequest(model="colbert", inputs=[pb.Input(text=t) for t in TEXTS], input_type=pb.INPUT_TYPE_QUERY)
        )
    for got in (ours["sparse"], ours["sparse_stream"], ours["sparse_job"]):
        assert all(isinstance(v, SparseVector) for v in got) and len(got) == 3
        for vector, emb in zip(got, sparse.embeddings):
            assert vector.dimensions == 30522 and len(vector) > 10
            assert vector.indices.tolist() == list(emb.sparse.indices)
            assert np.abs(vector.values - np.array(emb.sparse.values)).max() <= 1e-6
            dense = vector.to_dense()
            assert dense.shape == (30522,) and np.flatnonzero(dense).tolist() == list(emb.sparse.indices)
    assert [m.shape for m in ours["multi_query"]] == [(e.rows, 128) for e in multi.embeddings]
    for got, emb in zip(ours["multi_query"], multi.embeddings):
        assert np.abs(got.reshape(-1) - np.array(emb.values, dtype=np.float32)).max() <= 1e-6
    # Documents drop punctuation (the skiplist), so the last text keeps fewer token vectors.
    assert ours["multi_document"][2].shape[0] < ours["multi_query"][2].shape[0]
    assert same(ours["multi_stream"], ours["multi_document"])  # embed_stream sends no input type
    errors = ours["errors"]
    assert all(kind == "EmbedstreamError" and rpc_error for kind, rpc_error, _, _ in errors.values()), errors
    assert errors["unknown model"][2] == "NOT_FOUND" and "nope" in errors["unknown model"][3]
    refused = f"UNAVAILABLE: cannot reach the gateway at 127.0.0.1:{tiny.closed}: connection refused"
    assert errors["refused"][3] == refused
    assert errors["not serving"][3].startswith(f"UNAVAILABLE: the gateway at 127.0.0.1:{tiny.down} is up but NOT_")
    assert all("\n" not in line and "_InactiveRpcError" not in line for *_, line in errors.values())
    assert issubclass(EmbedstreamError, grpc.RpcError)
