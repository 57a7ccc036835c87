"""The wheel installs one namespace: embedstream, with gateway/ and workers/ inside it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_gateway_and_workers_under_embedstream(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("embedstream-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"embedstream"}
    for module in ("gateway/server.py", "gateway/main.py", "workers/worker.py", "workers/main.py"):
        assert f"embedstream/{module}" in names
    # `embedstream eval --sample` reads its dataset from the installed package.
    for data in ("evaluation/runner.py", *(f"data/eval-sample/{f}" for f in ("corpus.jsonl", "queries.jsonl"))):
        assert f"embedstream/{data}" in names
    assert "embedstream/data/eval-sample/qrels/test.tsv" in names


def test_the_shared_layer_imports_nothing_from_gateway_or_workers() -> None:
    # embedstream/*.py is the bottom layer: clients, wire format, keys, settings, the CLI.
    for path in (ROOT / "embedstream").glob("*.py"):
        text = path.read_text()
        for upper in ("embedstream.gateway", "embedstream.workers"):
            for line in text.splitlines():
                if line.lstrip().startswith(("import ", "from ")):
                    assert upper not in line, f"{path.name} imports {upper}: {line.strip()}"
