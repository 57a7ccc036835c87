"""The Dockerfiles: built from the context .dockerignore leaves, unprivileged, tagged with the version."""

from __future__ import annotations

import fnmatch
import re
import subprocess
from pathlib import Path

import dockerfile
import pytest

from tests.support import ROOT
from tests.support.deploy import DEPLOY, IMAGE, IMAGE_CUDA, OVERLAYS, VERSION, compose, containers, overlay, stage


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context (last matching pattern wins)."""
    ignored = False
    parts = Path(path).parts
    for pattern in patterns:
        keep = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.removeprefix("**/")) for p in prefixes):
            ignored = not keep
    return ignored


@pytest.mark.parametrize("file", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfile_builds_from_the_context_and_runs_unprivileged(file: str) -> None:
    commands = dockerfile.parse_file(str(DEPLOY / file))
    froms = [c.value for c in commands if c.cmd == "FROM"]
    assert len(froms) >= 2 and froms[-1][-2:] == ("AS", "runtime"), "multi-stage, the runtime stage last"
    args = dict(v.split("=", 1) for c in commands if c.cmd == "ARG" for v in c.value if "=" in v)
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for command in commands:
        if command.cmd in ("COPY", "ADD") and not any(f.startswith("--from") for f in command.flags):
            for source in command.value[:-1]:
                source = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], source).rstrip("/")
                assert (ROOT / source).exists(), f"{file}: COPY {source}: no such path"
                assert not _ignored(source, patterns), f"{file}: COPY {source} is excluded by .dockerignore"
    (user,) = stage(file, -1, "USER")
    assert user[0].split(":")[0] not in ("0", "root") and user[0].split(":")[0].isdigit()
    (entrypoint,) = stage(file, -1, "ENTRYPOINT")
    assert entrypoint == ("embedstream",)
    env = {k: v for values in stage(file, -1, "ENV") for k, v in zip(values[::2], values[1::2], strict=True)}
    assert env["HF_HUB_OFFLINE"] == "1"
    requirements = (ROOT / "requirements.txt").read_text()
    for pin in ("torch==", "torchvision=="):  # the RUN step greps these pins out of requirements.txt
        assert re.search(rf"^{pin}\S+$", requirements, re.M), f"requirements.txt lost its {pin} pin"
    assert _ignored(".venv/bin/python", patterns) and not _ignored("embedstream/cli.py", patterns)


def test_images_are_the_versioned_tags() -> None:
    for name in OVERLAYS:
        for _, container in containers(overlay(name)):
            if container["name"] != "redis":
                assert container["image"] in (IMAGE, IMAGE_CUDA), f"{name}: {container['image']}"
    services = compose()["services"]
    assert services["gateway"]["image"] == services["worker"]["image"] == IMAGE
    assert (DEPLOY / services["gateway"]["build"]["context"]).resolve() == ROOT
    for file, tag in (("Dockerfile", IMAGE), ("Dockerfile.cuda", IMAGE_CUDA)):
        text = (DEPLOY / file).read_text()
        assert f"docker build -f deploy/{file} -t {tag} ." in text, f"{file}: its build command names another tag"
        (label,) = stage(file, -1, "LABEL")
        labels = dict(zip(label[::2], label[1::2], strict=True))
        assert labels["org.opencontainers.image.version"].strip('"') == VERSION
    done = subprocess.run(["make", "-s", "-n", "image", "image-cuda"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == [
        f"docker build -f deploy/Dockerfile -t {IMAGE} .",
        f"docker build -f deploy/Dockerfile.cuda -t {IMAGE_CUDA} .",
    ]
