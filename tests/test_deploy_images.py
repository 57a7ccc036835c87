"""The Dockerfiles: built from the context .dockerignore leaves, unprivileged, tagged with the version."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
from pathlib import Path

import dockerfile
import numpy as np
import pytest

from embedstream.client import Client
from embedstream.redis_server import free_port
from tests.support import ROOT
from tests.support.deploy import DEPLOY, IMAGE, IMAGE_CUDA, OVERLAYS, VERSION, compose, containers, overlay, stage
from tests.support.processes import wait_until


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


def container_engine() -> str:
    """Why no image can be built here, or '' when a Docker engine answers."""
    if shutil.which("docker") is None:
        return "no container runtime: the docker client is not installed"
    info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if info.returncode != 0 or not info.stdout.strip():
        said = (info.stderr.strip().splitlines() or ["no answer"])[-1]
        return f"the docker client is installed but no Docker engine runs here (docker info: {said})"
    return ""


@pytest.mark.slow
def test_make_image_builds_an_image_that_checks_and_embeds(tmp_path: Path) -> None:
    """`make image`, then Redis, a gateway and a worker of that image: `embedstream check` and one Embed."""
    why = container_engine()
    if why:
        pytest.skip(why)
    built = subprocess.run(["make", "image"], cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert built.returncode == 0, built.stderr[-3000:]
    redis_port, port = free_port(), free_port()
    env = ["-e", f"EMBEDSTREAM_REDIS_URL=redis://127.0.0.1:{redis_port}/0", "-e", f"EMBEDSTREAM_PORT={port}"]
    names = [f"embedstream-smoke-{role}-{port}" for role in ("redis", "gateway", "worker")]
    runs = [
        ["redis:7-alpine", "redis-server", "--port", str(redis_port), "--bind", "127.0.0.1"],
        [*env, "-e", "EMBEDSTREAM_HOST=127.0.0.1", IMAGE, "gateway"],
        [*env, IMAGE, "worker"],
    ]
    try:
        for name, args in zip(names, runs):
            subprocess.run(["docker", "run", "-d", "--rm", "--network", "host", "--name", name, *args], check=True)
        check = [
            *["docker", "exec", names[1]],
            "embedstream",
            "check",
            "--port",
            str(port),
            "--service",
            "all-MiniLM-L6-v2",
        ]
        wait_until(lambda: subprocess.run(check, capture_output=True).returncode == 0, 300, interval=1, what="check")
        with Client(f"127.0.0.1:{port}") as client:
            vectors = client.embed(["hello from the image"])
        assert isinstance(vectors, np.ndarray) and vectors.shape == (1, 384)
    finally:
        subprocess.run(["docker", "rm", "-f", *names], capture_output=True)
