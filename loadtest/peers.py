"""`make bench-peers`: embedstream beside Infinity (michaelfeil/infinity) on the same texts and shapes, in one run.

Infinity runs from its own venv (``.embedstream/peers/infinity``, made by the Make target from
loadtest/requirements-peers.txt) as an HTTP server on this machine, offline, on the MiniLM folder
the worker uses, its engine and batching left at their defaults; embedstream as gateway + Redis +
worker in its default configuration. Each server runs alone while measured, on the same
deterministic texts (8-64 words), and both are measured against sentence-transformers in this
process on all cores ("raw") in the same run. Infinity has no bidi stream: its "one stream"
figure is one caller sending 32-text requests back to back. Not part of `make test`.
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
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Infinity gets the environment as the caller left it, not the worker's OpenMP settings set below.
PEER_ENV = dict(os.environ, INFINITY_ANONYMOUS_USAGE_STATS="0", DO_NOT_TRACK="1")

from embedstream import registry  # noqa: E402
from embedstream.redis_server import free_port  # noqa: E402
from embedstream.workers.threads import cores, prepare_environment  # noqa: E402
from loadtest.corpus import goal_texts  # noqa: E402
from loadtest.measure import (  # noqa: E402
    Service,
    concurrent_throughput,
    percentiles,
    rss_mb,
    save,
    stream_throughput,
    timed_callers,
    unary_times,
)
from loadtest.raw import raw_sentence_transformers  # noqa: E402

VENV = ROOT / ".embedstream/peers/infinity"
SHAPES = ("one stream, 32 texts/request", "4 callers x 32 texts/request", "8 callers x 1 text")


@dataclass
class Figures:
    """One server's figures: texts/s of each of SHAPES, one-text p50 (ms), resident MiB by process."""

    rates: list[float]
    p50: float
    rss: dict[str, float]


def callers(call: Callable[[list[str]], None], chunks: list[list[str]], concurrency: int) -> float:
    """Seconds for ``concurrency`` threads to send every chunk, each waiting for its answer."""
    lock = threading.Lock()
    pending = iter(chunks)
    errors: list[BaseException] = []

    def caller() -> None:
        while True:
            with lock:
                chunk = next(pending, None)
            if chunk is None or errors:
                return
            try:
                call(chunk)
            except Exception as exc:  # reported below, once the other callers have stopped
                errors.append(exc)

    elapsed = timed_callers(caller, concurrency)
    if errors:
        raise RuntimeError(f"{len(errors)} Infinity calls failed, first: {errors[0]}")
    return elapsed


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class Infinity:
    """An Infinity server from its venv, and an HTTP client for its /embeddings."""

    def __init__(self, model_path: str, log: Path, start_timeout: float) -> None:
        self.port = free_port()
        self.log = log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            [
                *(str(VENV / "bin/infinity_emb"), "v2", "--model-id", model_path, "--served-model-name", "minilm"),
                *("--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu"),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=PEER_ENV,
        )
        self._local = threading.local()
        deadline = time.monotonic() + start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.close()
                raise RuntimeError(f"Infinity exited ({self.proc.returncode}); {log} ends:\n{tail(log)}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        self.close()
        raise RuntimeError(f"Infinity not healthy after {start_timeout:.0f} s; {log} ends:\n{tail(log)}")

    def embed(self, texts: list[str]) -> None:
        """One /embeddings call (a keep-alive connection per thread)."""
        body = json.dumps({"model": "minilm", "input": texts})
        conn = getattr(self._local, "conn", None)
        try:
            if conn is None:
                raise ConnectionError("no connection yet")
            response = self._post(conn, body)
        except (ConnectionError, http.client.RemoteDisconnected):
            # uvicorn closes a keep-alive connection idle for 5 s: open a new one and send again.
            conn = self._local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
            response = self._post(conn, body)
        answer = response.read()
        if response.status != 200:
            raise RuntimeError(f"Infinity answered {response.status}: {answer[:500]!r}")
        count = len(json.loads(answer)["data"])
        if count != len(texts):
            raise RuntimeError(f"Infinity returned {count} vectors for {len(texts)} texts")

    @staticmethod
    def _post(conn: http.client.HTTPConnection, body: str) -> http.client.HTTPResponse:
        conn.request("POST", "/embeddings", body, {"Content-Type": "application/json"})
        return conn.getresponse()

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def measure_infinity(model_path: str, texts: list[str], probes: list[str], workdir: Path, timeout: float) -> Figures:
    """Texts/s of each shape, one-text latencies (ms) and resident memory (MiB) of Infinity."""
    peer = Infinity(model_path, workdir / "infinity.log", timeout)
    try:
        for k in range(0, 64, 32):
            peer.embed(texts[k : k + 32])
        by32 = [texts[k : k + 32] for k in range(0, len(texts), 32)]
        rates = [
            len(texts) / callers(peer.embed, by32, 1),
            len(texts) / callers(peer.embed, by32, 4),
            len(texts) / callers(peer.embed, [[t] for t in texts], 8),
        ]
        for text in probes[:10]:
            peer.embed([text])
        single = []
        for text in probes:
            started = time.perf_counter()
            peer.embed([text])
            single.append((time.perf_counter() - started) * 1000)
        return Figures(rates, percentiles(single)[0], {"infinity": rss_mb(peer.proc.pid)})
    finally:
        peer.close()


def measure_embedstream(model_path: str, texts: list[str], probes: list[str], workdir: Path) -> Figures:
    """The same figures for gateway + Redis + one worker, default configuration, over gRPC."""
    registry_path = workdir / "models.toml"
    registry_path.write_text(f'[models.minilm]\nfamily = "text-dense"\npath = "{model_path}"\n')
    service = Service(workdir, registry_path)
    try:
        worker = service.worker("minilm")
        stream_throughput(service.port, "minilm", texts[:200], per_request=32)
        rates = [
            stream_throughput(service.port, "minilm", texts, 32),
            concurrent_throughput(service.port, "minilm", texts, 4, 32),
            concurrent_throughput(service.port, "minilm", texts, 8, 1),
        ]
        unary_times(service.port, "minilm", probes[:10])
        p50 = percentiles(unary_times(service.port, "minilm", probes))[0]
        rss = {
            "gateway": rss_mb(service.gateway.pid),
            "worker": rss_mb(worker.pid),
            "redis": rss_mb(int(service.client.info("server")["process_id"])),
        }
        return Figures(rates, p50, rss)
    finally:
        service.close()


def table(raw: float, raw_p50: float, peers: dict[str, Figures]) -> list[str]:
    """The table of issue 14: each peer's throughput as a ratio to raw, its p50 over raw's, memory."""
    lines = ["| shape | raw | " + " | ".join(peers) + " |", "| --- | --- |" + " --- |" * len(peers)]
    for i, shape in enumerate(SHAPES):
        first = f"{raw:.1f} texts/s" if i == 0 else "same"
        cells = [f"{m.rates[i] / raw:.2f}x ({m.rates[i]:.1f}/s)" for m in peers.values()]
        lines.append(f"| {shape} | {first} | " + " | ".join(cells) + " |")
    cells = [f"{m.p50 - raw_p50:+.1f} ms ({m.p50:.1f} ms)" for m in peers.values()]
    lines.append(f"| one text, concurrency 1, p50 | {raw_p50:.1f} ms | " + " | ".join(cells) + " |")
    cells = []
    for m in peers.values():
        parts = ", ".join(f"{name} {mb:.0f} MiB" for name, mb in m.rss.items()) if len(m.rss) > 1 else ""
        cells.append(f"{sum(m.rss.values()) / 1024:.2f} GiB" + (f" ({parts})" if parts else ""))
    lines.append("| resident memory (all processes) | - | " + " | ".join(cells) + " |")
    return lines


def infinity_version() -> str:
    script = "import importlib.metadata as m; print(m.version('infinity_emb'))"
    return subprocess.run([str(VENV / "bin/python"), "-c", script], capture_output=True, text=True).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--latency-texts", type=int, default=100)
    parser.add_argument("--start-timeout", type=float, default=600, help="seconds Infinity may take to be healthy")
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
    workdir = Path(tempfile.mkdtemp(prefix="embedstream-peers-"))
    load_before = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(
        f"peers: {len(texts)} texts of 8-64 words, MiniLM-L6 on {cores()} cores, load {load_before}; logs in {workdir}"
    )
    raw, raw_times = raw_sentence_transformers(model_path, texts, probes)
    raw_p50 = percentiles(raw_times)[0]
    print(f"  raw (sentence-transformers, all cores, batch 32): {raw:.1f} texts/s, one text p50 {raw_p50:.1f} ms")
    peers = {f"Infinity {infinity_version()}": measure_infinity(model_path, texts, probes, workdir, args.start_timeout)}
    print("  Infinity measured; embedstream next", flush=True)
    peers["embedstream default"] = measure_embedstream(model_path, texts, probes, workdir)
    load_after = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"peers, one run (load {load_before} before, {load_after} after):")
    print("\n".join(table(raw, raw_p50, peers)))
    figures: dict[str, float | str] = {"raw_texts_per_s": round(raw, 2), "raw_one_text_p50_ms": round(raw_p50, 2)}
    figures.update(load_before=load_before, load_after=load_after)
    for name, m in peers.items():
        for shape, rate in zip(SHAPES, m.rates):
            figures[f"{name} {shape} vs raw"] = round(rate / raw, 3)
        figures[f"{name} one text p50 over raw ms"] = round(m.p50 - raw_p50, 2)
        figures.update({f"{name} rss {proc} mib": round(mb, 1) for proc, mb in m.rss.items()})
    return save(args.json, figures)


if __name__ == "__main__":
    sys.exit(main())
