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
    # Every module of the three folders ships (a new subpackage missing from pyproject's list would not).
    sources = {f"embedstream/{p.relative_to(ROOT / 'embedstream')}" for p in (ROOT / "embedstream").rglob("*.py")}
    for folder in ("gateway", "workers"):
        sources |= {f"embedstream/{folder}/{p.relative_to(ROOT / folder)}" for p in (ROOT / folder).rglob("*.py")}
    assert sources <= set(names), sorted(sources - set(names))
    # `embedstream eval --sample` reads its dataset from the installed package.
    for data in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        assert f"embedstream/data/eval-sample/{data}" in names


def test_the_shared_layer_imports_nothing_from_gateway_or_workers() -> None:
    # embedstream/ is the bottom layer: clients, wire format, keys, settings, the CLI.
    for path in (ROOT / "embedstream").rglob("*.py"):
        text = path.read_text()
        for upper in ("embedstream.gateway", "embedstream.workers"):
            for line in text.splitlines():
                if line.lstrip().startswith(("import ", "from ")):
                    assert upper not in line, f"{path.name} imports {upper}: {line.strip()}"
