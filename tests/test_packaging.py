"""The wheel installs one namespace: embedstream, with gateway/ and workers/ inside it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support import extras

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


@pytest.mark.slow
@pytest.mark.parametrize("role", ["client", "gateway", "worker"])
def test_each_extra_brings_every_module_its_role_imports(role: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """`pip install embedstream[role]`, resolved offline, in a venv that sees nothing else."""
    wheel = built_wheel(tmp_path_factory)
    tmp = tmp_path_factory.mktemp(f"extra-{role}")
    dists = extras.resolve(extras.requirements(wheel, role))
    python = extras.clean_venv(wheel, extras.link_tree(dists, tmp / "resolved"), tmp / "venv")
    modules = extras.role_imports(role)
    probe = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\nprint('ok')"
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONNOUSERSITE": "1", "HOME": str(tmp)}
    result = subprocess.run([str(python), "-c", probe, *modules], capture_output=True, text=True, env=env, cwd=tmp)
    assert result.returncode == 0, f"embedstream[{role}] lacks what {modules} need:\n{result.stderr[-3000:]}"
    if role == "worker":
        assert {"open-clip-torch", "pillow", "timm", "ftfy", "torch", "sentence-transformers"} <= set(dists)
    # The venv sees only the resolved set: something no extra brings is not importable.
    hidden = subprocess.run([str(python), "-c", "import pytest"], capture_output=True, env=env, cwd=tmp)
    assert hidden.returncode != 0


def built_wheel(factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built once per session."""
    folder = factory.getbasetemp() / "wheel"
    if not folder.exists():
        folder.mkdir()
        pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        subprocess.run(
            [*pip, "-w", str(folder), str(ROOT)],
            check=True,
            capture_output=True,
        )
    (wheel,) = folder.glob("embedstream-*.whl")
    return wheel
