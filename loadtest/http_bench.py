"""`make bench` part three: the HTTP API's throughput as a ratio of gRPC's, for the same texts.

One gateway + Redis + MiniLM worker as real processes. The same mixed-length corpus goes
through unary gRPC ``Embed`` (packed float32) and through HTTP ``POST /v1/embeddings``
(base64, what the OpenAI SDKs ask for by default; float too), 32 texts per request from a few
concurrent callers with keep-alive connections. The runs alternate (gRPC, HTTP, gRPC, HTTP)
so that the machine's drift falls on both; the goal is HTTP >= 0.9x gRPC.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from embedstream import registry  # noqa: E402
from embedstream.settings import Settings  # noqa: E402
from loadtest.corpus import mixed_texts  # noqa: E402
from loadtest.measure import Chunks, Service, concurrent_throughput, timed_callers  # noqa: E402

PER_REQUEST = 32


def http_throughput(
    port: int, model: str, texts: list[str], concurrency: int, per_request: int, encoding_format: str
) -> float:
    """Texts per second through POST /v1/embeddings, ``concurrency`` callers on keep-alive connections."""
    chunks = Chunks(texts, per_request)
    errors: list[str] = []

    def caller() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            while (chunk := chunks.next()) is not None:
                body = json.dumps({"model": model, "input": chunk, "encoding_format": encoding_format})
                connection.request("POST", "/v1/embeddings", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                data = response.read()
                if response.status != 200 or len(json.loads(data)["data"]) != len(chunk):
                    errors.append(f"{response.status} {data[:200]!r}")
                    return
        finally:
            connection.close()

    elapsed = timed_callers(caller, concurrency)
    if errors:
        raise RuntimeError(f"{len(errors)} calls failed, first: {errors[0]}")
    return len(texts) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=1000, help="corpus size of each run")
    parser.add_argument("--concurrency", type=int, default=4, help="concurrent callers")
    parser.add_argument("--per-request", type=int, default=PER_REQUEST, help="texts per request")
    parser.add_argument("--threads", type=int, default=0, help="worker torch threads (0: the service default)")
    args = parser.parse_args()
    threads = args.threads or Settings().torch_threads()
    texts = mixed_texts(args.texts, seed=11)
    with tempfile.TemporaryDirectory() as tmp:
        registry_path = Path(tmp) / "models.toml"
        path = registry.builtin().resolve("").path
        registry_path.write_text(f'[models.minilm]\nfamily = "text-dense"\npath = "{path}"\n')
        service = Service(Path(tmp), registry_path)
        try:
            found = re.search(r"HTTP on [^\s:]+:(\d+)", service.gateway.log())
            assert found, "the gateway announced no HTTP port"
            http_port = int(found.group(1))
            service.worker("minilm", threads)
            concurrent_throughput(service.port, "minilm", texts[:128], args.concurrency, args.per_request)  # warm
            http_throughput(http_port, "minilm", texts[:128], args.concurrency, args.per_request, "base64")
            figures: dict[str, float] = {"grpc": 0.0, "base64": 0.0, "float": 0.0}
            for _ in range(2):
                figures["grpc"] += concurrent_throughput(
                    service.port, "minilm", texts, args.concurrency, args.per_request
                )
                figures["base64"] += http_throughput(
                    http_port, "minilm", texts, args.concurrency, args.per_request, "base64"
                )
            figures["float"] = 2 * http_throughput(
                http_port, "minilm", texts, args.concurrency, args.per_request, "float"
            )
        finally:
            service.close()
    grpc_rate, base64_rate, float_rate = figures["grpc"] / 2, figures["base64"] / 2, figures["float"] / 2
    print(
        f"HTTP vs gRPC, MiniLM, {args.per_request} texts/request, {args.concurrency} callers, {threads} torch "
        f"thread(s), {len(texts)} texts x2 each:"
    )
    print(f"  gRPC Embed (packed f32)          {grpc_rate:8.1f} texts/s")
    print(f"  HTTP /v1/embeddings (base64)     {base64_rate:8.1f} texts/s = {base64_rate / grpc_rate:.2f}x gRPC")
    print(f"  HTTP /v1/embeddings (float JSON) {float_rate:8.1f} texts/s = {float_rate / grpc_rate:.2f}x gRPC")
    return 0


if __name__ == "__main__":
    sys.exit(main())
