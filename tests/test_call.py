"""`embedstream call`: grpcurl-style JSON in, JSON out, against a real gateway, Redis and workers."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from embedstream.v1 import embedder_pb2 as pb
from tests.conftest import Service
from tests.support import ROOT
from tests.support.processes import cli, stub


def call(service: Service, method: str, data: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "embedstream", "call", "-plaintext", "-d", data, f"127.0.0.1:{service.port}", method]
    return subprocess.run(args, env=service.env, capture_output=True, text=True, cwd=ROOT, input=stdin, timeout=60)


def replies(out: str) -> list[dict[str, object]]:
    """The JSON messages printed one after another."""
    decoder, found, rest = json.JSONDecoder(), [], out.strip()
    while rest:
        value, end = decoder.raw_decode(rest)
        found.append(value)
        rest = rest[end:].lstrip()
    return found


def test_embed_from_json_equals_the_stub(service: Service) -> None:
    request = {"model": "all-MiniLM-L6-v2", "inputs": [{"text": "a cat on a mat"}, {"text": "stocks fell"}]}
    result = call(service, "embedstream.v1.Embedder/Embed", json.dumps(request))
    assert result.returncode == 0, result.stderr
    (reply,) = replies(result.stdout)
    got = np.array([e["values"] for e in reply["embeddings"]], dtype=np.float32)  # type: ignore[index, union-attr]
    with stub(service.port) as s:
        want = s.Embed(
            pb.EmbedRequest(
                model="all-MiniLM-L6-v2", inputs=[pb.Input(text=t) for t in ("a cat on a mat", "stocks fell")]
            ),
            timeout=30,
        )
    np.testing.assert_allclose(got, np.array([list(e.values) for e in want.embeddings]), rtol=0, atol=1e-6)


def test_a_stream_reads_its_messages_from_stdin(service: Service) -> None:
    messages = "".join(json.dumps({"model": "debug", "inputs": [{"text": f"text {i}"}]}) + "\n" for i in range(3))
    result = call(service, "embedstream.v1.Embedder/EmbedStream", "@", stdin=messages)
    assert result.returncode == 0, result.stderr
    assert len(replies(result.stdout)) == 3


def test_errors_are_one_readable_status_or_a_usage_error(service: Service) -> None:
    result = call(service, "embedstream.v1.Embedder/Embed", '{"model": "nope", "inputs": [{"text": "x"}]}')
    assert result.returncode == 1 and "Code: NOT_FOUND" in result.stderr and "Traceback" not in result.stderr
    result = call(service, "embedstream.v1.Embedder/Nope", "{}")
    assert result.returncode == 2 and "embedstream.v1.Embedder/Embed" in result.stderr
    result = call(service, "embedstream.v1.Embedder/Embed", '{"inputs": [')
    assert result.returncode == 2 and "not JSON" in result.stderr
    assert cli("call", "--help").returncode == 0
