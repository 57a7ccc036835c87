"""`make bench-peers`: embedstream beside Infinity (michaelfeil/infinity) on the same texts and shapes, in one run.

Infinity runs from its own venv (``.embedstream/peers/infinity``, made by the Make target:
infinity-emb wants an older torch) as an HTTP server on this machine; embedstream as
gateway + Redis + worker in its default configuration. Both serve the MiniLM folder the
worker uses, and both are measured against sentence-transformers in this process on all
cores ("raw"). Infinity has no bidi stream: its "one stream" figure is one caller sending
32-text requests back to back. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from embedstream import registry  # noqa: E402
from embedstream.redis_server import free_port  # noqa: E402
from embedstream.workers.threads import prepare_environment  # noqa: E402
from loadtest.corpus import goal_texts  # noqa: E402
from loadtest.measure import (  # noqa: E402
    Service,
    concurrent_throughput,
    percentiles,
    raw_sentence_transformers,
    rss_mb,
    save,
    stream_throughput,
    timed_callers,
    unary_times,
)

VENV = ROOT / ".embedstream/peers/infinity"


def callers(call: Callable[[list[str]], None], chunks: list[list[str]], concurrency: int) -> float:
    """Seconds for ``concurrency`` threads to send every chunk, each waiting for its answer."""
    lock = threading.Lock()
    pending = iter(chunks)

    def caller() -> None:
        while True:
            with lock:
                chunk = next(pending, None)
            if chunk is None:
                return
            call(chunk)

    return timed_callers(caller, concurrency)


class Infinity:
    """An Infinity server from its venv, and an HTTP client for its /embeddings."""

    def __init__(self, model_path: str, log: Path) -> None:
        self.port = free_port()
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            [
                *(str(VENV / "bin/infinity_emb"), "v2", "--model-id", model_path, "--served-model-name", "minilm"),
                *("--port", str(self.port), "--engine", "torch", "--device", "cpu", "--batch-size", "32"),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, INFINITY_ANONYMOUS_USAGE_STATS="0", DO_NOT_TRACK="1"),
        )
        self._local = threading.local()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"infinity exited; see {log}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"infinity did not start; see {log}")

    def embed(self, texts: list[str]) -> None:
        """One /embeddings call (a keep-alive connection per thread)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        conn.request(
            "POST", "/embeddings", json.dumps({"model": "minilm", "input": texts}), {"Content-Type": "application/json"}
        )
        body = json.loads(conn.getresponse().read())
        assert len(body["data"]) == len(texts), body

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--latency-texts", type=int, default=100)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if not (VENV / "bin/infinity_emb").exists():
        print(f"no Infinity at {VENV}: run `make bench-peers`", file=sys.stderr)
        return 2
    prepare_environment()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    texts = goal_texts(args.texts)
    probes = goal_texts(args.latency_texts, seed=13)
    model_path = registry.builtin().resolve("").path
    raw, raw_times = raw_sentence_transformers(model_path, texts, probes)
    raw_p50, _ = percentiles(raw_times)
    rows: dict[str, dict[str, float]] = {}
    workdir = Path(tempfile.mkdtemp(prefix="embedstream-peers-"))

    peer = Infinity(model_path, workdir / "infinity.log")
    try:
        peer.embed(texts[:64])
        one = [[t] for t in probes]
        single = []
        for chunk in one:
            started = time.perf_counter()
            peer.embed(chunk)
            single.append((time.perf_counter() - started) * 1000)
        by32 = [texts[k : k + 32] for k in range(0, len(texts), 32)]
        rows["infinity"] = {
            "one stream 32/req": len(texts) / callers(peer.embed, by32, 1) / raw,
            "4 callers x 32": len(texts) / callers(peer.embed, by32, 4) / raw,
            "8 callers x 1": len(texts) / callers(peer.embed, [[t] for t in texts], 8) / raw,
            "one text p50 over raw (ms)": percentiles(single)[0] - raw_p50,
            "RSS (GiB)": rss_mb(peer.proc.pid) / 1024,
        }
    finally:
        peer.close()

    registry_path = workdir / "models.toml"
    registry_path.write_text(f'[models.minilm]\nfamily = "text-dense"\npath = "{model_path}"\n')
    service = Service(workdir, registry_path)
    try:
        worker = service.worker("minilm")
        stream_throughput(service.port, "minilm", texts[:200], per_request=32)
        rows["embedstream"] = {
            "one stream 32/req": stream_throughput(service.port, "minilm", texts, 32) / raw,
            "4 callers x 32": concurrent_throughput(service.port, "minilm", texts, 4, 32) / raw,
            "8 callers x 1": concurrent_throughput(service.port, "minilm", texts, 8, 1) / raw,
            "one text p50 over raw (ms)": percentiles(unary_times(service.port, "minilm", probes))[0] - raw_p50,
            "RSS (GiB)": sum(
                rss_mb(pid)
                for pid in (service.gateway.pid, worker.pid, int(service.client.info("server")["process_id"]))
            )
            / 1024,
        }
    finally:
        service.close()

    print(f"peers: {len(texts)} texts of 8-64 words, MiniLM-L6; raw {raw:.1f} texts/s, one text p50 {raw_p50:.1f} ms")
    columns = list(rows["embedstream"])
    print(f"  {'':<12}" + "".join(f"{c:>28}" for c in columns))
    for name, row in rows.items():
        print(f"  {name:<12}" + "".join(f"{row[c]:>28.2f}" for c in columns))
    return save(args.json, {f"{name} {c}": round(v, 3) for name, row in rows.items() for c, v in row.items()})


if __name__ == "__main__":
    sys.exit(main())
