"""`make bench-scale`: throughput of one model with 1, 2 and 4 workers, in one run.

The model is the debug model with a fixed cost per batch (``--batch-ms``, a sleep, so
workers do not compete for this machine's cores): each worker can do at most
``batch_size / batch_ms`` inputs per second, measured first in-process ("raw"). The
service then gets enough concurrent callers to keep every worker's batches full, and
the script prints, per worker count, inputs/s, the speed-up over one worker and the
efficiency against n x raw. Near-linear scaling means efficiency close to 1.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from embedstream import registry, registryfile  # noqa: E402
from embedstream.workers.debug import DebugModel  # noqa: E402
from embedstream.workers.model import Tokens  # noqa: E402
from loadtest.measure import Service, concurrent_throughput, save  # noqa: E402

MODEL = "scaled"


def registry_text(batch_ms: float, batch_size: int) -> str:
    return (
        f'default = "{MODEL}"\n\n[models.{MODEL}]\nfamily = "debug"\ndimensions = 64\n'
        f"latency_ms = {batch_ms}\nmax_batch_size = {batch_size}\nmax_queue_entries = 100000\n"
    )


def raw_throughput(spec: registry.ModelSpec, batches: int) -> float:
    """Inputs/s of the model in-process: full batches back to back."""
    model = DebugModel(spec)
    batch = [Tokens(None, 8, False, f"text {i} of a batch") for i in range(spec.max_batch_size)]
    started = time.perf_counter()
    for _ in range(batches):
        model.forward(batch, [True] * len(batch))
    return batches * len(batch) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2,4", help="worker counts to measure (default 1,2,4)")
    parser.add_argument("--batch-ms", type=float, default=50.0, help="fixed cost of one batch (default 50 ms)")
    parser.add_argument("--batch-size", type=int, default=16, help="inputs per batch (default 16)")
    parser.add_argument("--seconds", type=float, default=8.0, help="load per worker count (default 8 s)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = work / "models.toml"
        path.write_text(registry_text(args.batch_ms, args.batch_size))
        spec = registryfile.load(str(path)).models[MODEL]
        raw = raw_throughput(spec, batches=40)
        print(f"raw (in-process, one model): {raw:,.0f} inputs/s")
        results: dict[str, float | str] = {"raw_inputs_per_s": raw}
        service = Service(work, path)
        try:
            base = 0.0
            for n in counts:
                while len(service.workers) < n:
                    service.worker(MODEL, threads=1)
                # Enough callers to fill every worker's batches four times over; the corpus
                # sized for about --seconds of work at the ideal rate; a short warm-up first.
                per_request = 4
                concurrency = 4 * n * args.batch_size // per_request
                concurrent_throughput(service.port, MODEL, ["warm up"] * int(raw * n), concurrency, per_request)
                texts = [f"scaling text {i} " + "word " * (i % 7) for i in range(int(raw * n * args.seconds))]
                rate = concurrent_throughput(service.port, MODEL, texts, concurrency, per_request)
                base = base or rate
                speedup, efficiency = rate / base, rate / (n * raw)
                print(
                    f"{n} worker{'s' if n > 1 else ' '}: {rate:8,.0f} inputs/s   "
                    f"x{speedup:4.2f} over 1 worker   {efficiency:4.0%} of {n} x raw"
                )
                results[f"workers_{n}_inputs_per_s"] = rate
                results[f"workers_{n}_speedup"] = speedup
                results[f"workers_{n}_efficiency"] = efficiency
        finally:
            service.close()
    return save(args.json, results)


if __name__ == "__main__":
    raise SystemExit(main())
