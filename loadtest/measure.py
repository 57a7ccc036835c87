"""What the benchmarks measure with: the in-process (raw) model, the service's processes, and
callers (one stream, concurrent unary calls, single calls, calls beside a saturating stream).
Shared by `make bench`, `make bench-peers`, `make bench-gpu`, the HTTP, scaling and priority runs."""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import grpc  # noqa: E402
import redis  # noqa: E402

from embedstream import registry  # noqa: E402
from embedstream.redis_server import RedisServer  # noqa: E402
from embedstream.v1 import embedder_pb2 as pb  # noqa: E402
from embedstream.v1 import embedder_pb2_grpc as pb_grpc  # noqa: E402
from tests.support.processes import Proc, base_env, start_gateway, start_worker  # noqa: E402

PER_REQUEST = 16


def raw_throughput(spec: registry.ModelSpec, threads: int, texts: list[str]) -> float:
    """Texts/s of tokenize + batch + forward in this process, as the worker does it."""
    from embedstream.wire import Job
    from embedstream.workers.batcher import PADDING_FACTOR, Batcher, Entry, complete
    from embedstream.workers.loader import load

    model = load(spec, threads)
    warm = model.tokenize(texts[:64])
    model.forward(warm, [True] * len(warm))
    started = time.perf_counter()
    tokens = model.tokenize(texts)
    entry = Entry(b"raw", Job("raw", "", 2**62, 0, texts), "", b"", tokens, True)
    batcher = Batcher(spec.max_batch_tokens, spec.max_batch_size, PADDING_FACTOR if spec.device == "cpu" else 0.0)
    batcher.add(entry)
    while len(batcher):
        batch = batcher.take()
        complete(batch, model.forward([tokens[it.index] for it in batch], [True] * len(batch)), 0.0)
    elapsed = time.perf_counter() - started
    del model
    gc.collect()
    return len(texts) / elapsed


def stream_throughput(port: int, model: str, texts: Sequence[str | bytes], per_request: int = PER_REQUEST) -> float:
    """Inputs/s through one EmbedStream (str items are texts, bytes items encoded images)."""

    def requests() -> Iterator[pb.EmbedRequest]:
        for k in range(0, len(texts), per_request):
            yield pb.EmbedRequest(
                model=model,
                request_id=str(k),
                inputs=[
                    pb.Input(image=t) if isinstance(t, bytes) else pb.Input(text=t) for t in texts[k : k + per_request]
                ],
                encoding=pb.VECTOR_ENCODING_PACKED_F32LE,
            )

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.EmbedderStub(channel)
        started = time.perf_counter()
        count = sum(len(r.embeddings) for r in stub.EmbedStream(requests(), timeout=3600))
        elapsed = time.perf_counter() - started
    assert count == len(texts), f"got {count} of {len(texts)} vectors"
    return len(texts) / elapsed


class Chunks:
    """The requests of a closed-loop run: ``per_request`` texts each, handed to concurrent callers once."""

    def __init__(self, texts: Sequence[str], per_request: int) -> None:
        self._items = iter([list(texts[k : k + per_request]) for k in range(0, len(texts), per_request)])
        self._lock = threading.Lock()

    def next(self) -> list[str] | None:
        """The next request's texts; None when all are taken."""
        with self._lock:
            return next(self._items, None)


def timed_callers(caller: Callable[[], None], concurrency: int) -> float:
    """Seconds until ``concurrency`` threads running ``caller`` have all returned."""
    threads = [threading.Thread(target=caller) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def concurrent_throughput(
    port: int, model: str, texts: list[str], concurrency: int = 32, per_request: int = 1
) -> float:
    chunks = Chunks(texts, per_request)
    errors: list[BaseException] = []

    def caller() -> None:
        while (chunk := chunks.next()) is not None:
            try:
                request = pb.EmbedRequest(
                    model=model, inputs=[pb.Input(text=t) for t in chunk], encoding=pb.VECTOR_ENCODING_PACKED_F32LE
                )
                stub.Embed(request, timeout=120)
            except grpc.RpcError as exc:
                errors.append(exc)
                return

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.EmbedderStub(channel)
        elapsed = timed_callers(caller, concurrency)
    if errors:
        raise RuntimeError(f"{len(errors)} calls failed, first: {errors[0]}")
    return len(texts) / elapsed


def save(path: str | None, results: dict[str, float | str]) -> int:
    """Write the figures as JSON where asked; the exit code."""
    if path:
        Path(path).write_text(json.dumps(results, indent=2))
    return 0


def device_options(description: str, add: Callable[[argparse.ArgumentParser], None]) -> argparse.Namespace:
    """A device bench's options: --device and --dtype, the bench's own (``add``), --threads and --json."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N")
    parser.add_argument("--dtype", default="float32")
    add(parser)
    parser.add_argument("--threads", type=int, default=0, help="worker torch threads (0: the service default)")
    parser.add_argument("--json", help="also write the figures to this file")
    return parser.parse_args()


class Figures(dict[str, float | str]):
    """A bench's figures, the machine first; each one printed as it is recorded."""

    def __init__(self, width: int, **header: float | str) -> None:
        machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
        super().__init__(machine=machine, **header)
        self.width = width

    def say(self, key: str, value: float | str, unit: str = "") -> None:
        """Record ``key`` (floats to 2 places) and print it."""
        self[key] = round(value, 2) if isinstance(value, float) else value
        print(f"  {key:<{self.width}} {self[key]} {unit}".rstrip(), flush=True)


class Service:
    """Redis + gateway + one worker per (model, threads), all real processes."""

    def __init__(self, workdir: Path, registry_path: Path) -> None:
        self.redis = RedisServer(workdir / "redis", appendonly=False).start()
        self.client = redis.Redis.from_url(self.redis.url)
        self.env = base_env(self.redis.url, registry_path)
        self.logs = workdir / "logs"
        self.logs.mkdir()
        self.gateway, self.port = start_gateway(self.env, self.logs)
        self.workers: list[Proc] = []

    def worker(self, model: str, threads: int = 0, python: str = "") -> Proc:
        """Start a worker for ``model``; ``threads`` 0 leaves the default (adaptive) policy;
        ``python``: another interpreter (a venv with another torch wheel) runs it."""
        env = dict(self.env, EMBEDSTREAM_THREADS=str(threads)) if threads else self.env
        proc = start_worker(env, self.logs, model, self.client, timeout=300, python=python)
        self.workers.append(proc)
        return proc

    def close(self) -> None:
        for proc in [self.gateway, *self.workers]:
            proc.stop()
        self.client.close()
        self.redis.stop()


@contextmanager
def serving(workdir: Path, registry_path: Path, models: Sequence[str], threads: int) -> Iterator[Service]:
    """The service with one worker per model at ``threads``, closed on the way out."""
    service = Service(workdir, registry_path)
    try:
        for model in models:
            service.worker(model, threads)
        yield service
    finally:
        service.close()


def percentiles(times: list[float]) -> tuple[float, float]:
    """p50 and p99 of latencies (p99 by nearest rank: the smallest value at or above 99% of them)."""
    ordered = sorted(times)
    return statistics.median(ordered), ordered[max(0, math.ceil(len(ordered) * 0.99) - 1)]


def engine_of(port: int, model: str) -> str:
    """What runs ``model``'s forward pass, as ListModels says ("torch", "onnx")."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        listed = pb_grpc.EmbedderStub(channel).ListModels(pb.ListModelsRequest(), timeout=30)
    return next((m.profile.engine for m in listed.models if m.name == model), "")


def unary_times(port: int, model: str, texts: list[str]) -> list[float]:
    """Milliseconds of each one-text Embed, made one after another."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.EmbedderStub(channel)
        times = []
        for text in texts:
            started = time.perf_counter()
            stub.Embed(pb.EmbedRequest(model=model, inputs=[pb.Input(text=text)]), timeout=60)
            times.append((time.perf_counter() - started) * 1000)
    return times


def during_stream(port: int, model: str, corpus: list[str], probes: list[str]) -> list[float]:
    """One-text Embed latencies while another client keeps an EmbedStream saturating the worker."""
    stop = threading.Event()

    def saturate() -> None:
        while not stop.is_set():
            stream_throughput(port, model, corpus, per_request=32)

    thread = threading.Thread(target=saturate, daemon=True)
    thread.start()
    time.sleep(1.0)  # the stream fills the worker's pool first
    try:
        return unary_times(port, model, probes)
    finally:
        stop.set()
        thread.join()


def peak_rss_mb(pid: int) -> float:
    """The most resident memory the process ``pid`` has held (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, in MiB."""
    import psutil

    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20
