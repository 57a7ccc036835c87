"""The Node.js example client (examples/node) against the running service, checked against Python's."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from embedstream.client import Client
from tests.conftest import Service
from tests.support.corpora import texts

NODE_DIR = Path(__file__).resolve().parent.parent / "examples" / "node"


@pytest.fixture(scope="module")
def node() -> str:
    binary = shutil.which("node")
    if binary is None or shutil.which("npm") is None:
        pytest.fail("node and npm are required: `make deps` installs them from Debian's packages")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, capture_output=True, timeout=600
        )
    return binary


def test_node_client_vectors_equal_the_python_clients(service: Service, node: str, tmp_path: Path) -> None:
    corpus = texts(150, seed=41)
    (tmp_path / "corpus.txt").write_text("\n".join(corpus) + "\n")
    out = tmp_path / "vectors.json"
    result = subprocess.run(
        [
            node,
            "client.js",
            "--target",
            f"127.0.0.1:{service.port}",
            "--texts",
            str(tmp_path / "corpus.txt"),
            "--out",
            str(out),
        ],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    got = json.loads(out.read_text())
    with Client(f"127.0.0.1:{service.port}") as client:
        expected = client.embed(corpus)
    for way in ("embed", "stream", "job"):
        vectors = np.array(got[way], dtype=np.float32)
        assert vectors.shape == (150, 384), way
        assert np.abs(vectors - expected).max() <= 1e-4, way
