"""The Kubernetes manifests held to the code: a worker and a scaler per registry model, hardware,
threads, drain time, auth files, a Redis that keeps every write, and docs/deploy.md's paths."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from embedstream import apikeys, keys
from embedstream.settings import Settings
from tests.support import ROOT, documents
from tests.support.deploy import (
    DEPLOY,
    IMAGE_CUDA,
    OVERLAYS,
    compose,
    containers,
    env_of,
    find,
    one,
    overlay,
    pod_spec,
    registry_of,
    workers,
)

#: The Secret the operator creates before the first apply (docs/deploy.md, "Kubernetes").
REDIS_SECRET = "embedstream-redis"
#: The page that documents deploy/.
DEPLOY_PAGE = documents.DOCS / "deploy.md"


@pytest.mark.parametrize("name", OVERLAYS)
def test_each_registry_model_has_workers_and_a_scaler_on_its_own_streams(name: str, tmp_path: Path) -> None:
    docs = overlay(name)
    registry = registry_of(docs, tmp_path)
    by_model = workers(docs)
    assert set(by_model) == set(registry.models), "a worker Deployment per registry model, and no other"
    scaled = {d["spec"]["scaleTargetRef"]["name"]: d for d in find(docs, "ScaledObject")}
    assert set(scaled) == {d["metadata"]["name"] for d in by_model.values()}, "a ScaledObject per worker Deployment"
    auths = {d["metadata"]["name"]: d for d in find(docs, "TriggerAuthentication")}
    for model, deployment in by_model.items():
        spec = scaled[deployment["metadata"]["name"]]["spec"]
        triggers = spec["triggers"]
        assert {t["metadata"]["stream"] for t in triggers} == set(keys.lanes(model))
        env = env_of(pod_spec(deployment)["containers"][0])
        for trigger in triggers:
            meta = trigger["metadata"]
            assert trigger["type"] == "redis-streams"
            # With a consumerGroup KEDA counts pending entries or the group's lag, which miss the
            # work workers prefetch and read nil after a gateway XDELs an undelivered entry
            # (components/keda/keda.yaml); the stream length is the unanswered work itself.
            assert "consumerGroup" not in meta and int(meta["streamLength"]) > 0
            assert meta["addressFromEnv"] in env, "KEDA reads the address from the worker's env"
            assert env[meta["addressFromEnv"]]["secretKeyRef"]["name"] == REDIS_SECRET
            auth = auths[trigger["authenticationRef"]["name"]]["spec"]["secretTargetRef"]
            assert {(r["parameter"], r["name"], r["key"]) for r in auth} == {("password", REDIS_SECRET, "password")}
        queue_target = next(int(t["metadata"]["streamLength"]) for t in triggers if t["name"] == "queue")
        # Otherwise admission refuses work before the queue is deep enough to reach maxReplicaCount.
        assert registry.models[model].max_queue_entries >= queue_target * spec["maxReplicaCount"]
        assert spec["minReplicaCount"] >= 1, "interactive models are never scaled to zero by default"


@pytest.mark.parametrize("name", OVERLAYS)
def test_registry_configmap_loads_and_matches_the_hardware(name: str, tmp_path: Path) -> None:
    docs = overlay(name)
    registry = registry_of(docs, tmp_path)
    gpu = name == "gpu"
    for spec in registry.models.values():
        assert (spec.device.startswith("cuda"), spec.dtype) == ((True, "float16") if gpu else (False, "float32"))
    for doc, container in containers(docs):
        gpus = container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
        is_worker = container.get("args", [])[:1] == ["worker"]
        if gpu and is_worker:
            assert gpus == "1" and container["image"] == IMAGE_CUDA
            assert pod_spec(doc)["nodeSelector"] and pod_spec(doc)["tolerations"]
        else:
            assert gpus is None and container["image"] != IMAGE_CUDA, f"{name}: {container['name']} on a GPU"


def test_workers_use_as_many_torch_threads_as_their_cpu_limit() -> None:
    for name in OVERLAYS:
        for model, deployment in workers(overlay(name)).items():
            container = pod_spec(deployment)["containers"][0]
            ref = env_of(container)["EMBEDSTREAM_THREADS"]["resourceFieldRef"]
            assert (ref["containerName"], ref["resource"], ref["divisor"]) == (container["name"], "limits.cpu", "1")
            assert container["resources"]["limits"]["cpu"] == container["resources"]["requests"]["cpu"], model


def test_gateways_get_time_to_drain_before_they_are_killed() -> None:
    defaults = Settings()
    for name in OVERLAYS:
        gateway = one(overlay(name), "Deployment", "embedstream-gateway")
        env = env_of(pod_spec(gateway)["containers"][0])
        delay = float(env.get("EMBEDSTREAM_SHUTDOWN_DELAY_S", defaults.shutdown_delay_s))
        grace = float(env.get("EMBEDSTREAM_SHUTDOWN_GRACE_S", defaults.shutdown_grace_s))
        assert pod_spec(gateway)["terminationGracePeriodSeconds"] > delay + grace
    period = compose()["services"]["gateway"]["stop_grace_period"]
    assert int(period.removesuffix("s")) > defaults.shutdown_delay_s + defaults.shutdown_grace_s


@pytest.mark.parametrize("name", OVERLAYS)
def test_auth_is_on_and_every_file_it_needs_is_mounted(name: str, tmp_path: Path) -> None:
    docs = overlay(name)
    generated = {d["metadata"]["name"]: d for d in docs if d["kind"] in ("Secret", "ConfigMap")}
    documented = set(re.findall(r"--from-literal=(\w+)=", documents.section("## Kubernetes", DEPLOY_PAGE)))
    for doc, container in containers(docs):
        volumes = {v["name"]: v for v in pod_spec(doc).get("volumes", [])}
        for var, source in env_of(container).items():
            ref = source.get("secretKeyRef") if isinstance(source, dict) else None
            if ref and ref["name"] == REDIS_SECRET:
                assert ref["key"] in documented, f"docs/deploy.md's `kubectl create secret` lacks {ref['key']} ({var})"
            elif ref:
                assert ref["key"] in generated[ref["name"]]["data"]
        for volume in volumes.values():
            source = volume.get("secret", {}).get("secretName") or volume.get("configMap", {}).get("name")
            if source:
                assert source in generated, f"{doc['metadata']['name']}: volume {volume['name']} has no source"
        env = env_of(container)
        for var in ("EMBEDSTREAM_REGISTRY", "EMBEDSTREAM_API_KEYS_FILE"):
            if var not in env:
                continue
            path = Path(env[var])
            mount = next(m for m in container["volumeMounts"] if path.parent == Path(m["mountPath"]))
            volume = volumes[mount["name"]]
            source = generated[volume.get("secret", {}).get("secretName") or volume["configMap"]["name"]]
            raw = source["data"][path.name]
            text = raw if source["kind"] == "ConfigMap" else _b64(raw)
            if var == "EMBEDSTREAM_API_KEYS_FILE":
                apikeys.parse(text, path.name)  # the gateway's own parser: a bad line fails its start
    gateway = env_of(pod_spec(one(docs, "Deployment", "embedstream-gateway"))["containers"][0])
    assert Settings.from_env({"EMBEDSTREAM_API_KEYS_FILE": gateway["EMBEDSTREAM_API_KEYS_FILE"]}).auth
    service = compose()["services"]["gateway"]
    assert Settings.from_env({"EMBEDSTREAM_API_KEYS_FILE": service["environment"]["EMBEDSTREAM_API_KEYS_FILE"]}).auth
    mounts = {m.split(":")[1]: m.split(":")[0] for m in service["volumes"]}
    key_file = Path(service["environment"]["EMBEDSTREAM_API_KEYS_FILE"])
    host_dir = DEPLOY / mounts[str(key_file.parent)]
    apikeys.read_file(str(host_dir / key_file.name))
    assert (host_dir / key_file.name).stat().st_mode & 0o004, "the key file must be readable by the image's user"
    assert (DEPLOY / mounts[service["environment"]["EMBEDSTREAM_REGISTRY"]]).is_file()


def _b64(text: str) -> str:
    return base64.b64decode(text).decode()


def test_redis_keeps_every_write() -> None:
    docs = overlay("cpu")
    conf = one(docs, "ConfigMap", "embedstream-redis-config")["data"]["redis.conf"]
    options = dict(line.split(None, 1) for line in conf.splitlines() if line.strip() and not line.startswith("#"))
    assert (options["appendonly"], options["appendfsync"], options["maxmemory-policy"]) == (
        "yes",
        "always",
        "noeviction",
    )
    redis = one(docs, "StatefulSet", "embedstream-redis")
    container = pod_spec(redis)["containers"][0]
    assert container["args"][:2] == ["redis-server", "/etc/redis/redis.conf"]
    assert {m["mountPath"]: m["name"] for m in container["volumeMounts"]}[options["dir"]] in {
        t["metadata"]["name"] for t in redis["spec"]["volumeClaimTemplates"]
    }, "the append-only file must live on the PersistentVolumeClaim"
    assert _bytes(options["maxmemory"]) < _bytes(container["resources"]["limits"]["memory"])
    service = compose()["services"]["redis"]
    flags = dict(zip(service["command"][1::2], service["command"][2::2], strict=True))
    assert (flags["--appendonly"], flags["--appendfsync"], flags["--maxmemory-policy"]) == (
        "yes",
        "always",
        "noeviction",
    )
    volume, path = service["volumes"][0].split(":")
    assert path == "/data" and volume in compose()["volumes"]


def _bytes(size: str) -> int:
    match = re.fullmatch(r"(\d+)([a-zA-Z]*)", size)
    assert match, f"not a size: {size}"
    number, unit = match.groups()
    scale = {"": 1, "mb": 10**6, "gb": 10**9, "mi": 2**20, "gi": 2**30, "k": 1000, "m": 10**6, "g": 10**9}
    return int(number) * scale[unit.lower()]


def test_the_deploy_page_names_only_deploy_paths_that_exist() -> None:
    section = documents.section("# Deploy", DEPLOY_PAGE)
    paths = set(re.findall(r"\bdeploy/[\w./-]*\w", section))
    assert len(paths) >= 10
    for path in paths:
        assert (ROOT / path).exists(), f"docs/deploy.md names {path}, which does not exist"
    for command in re.findall(r"kubectl apply -k (\S+)", section):
        assert (ROOT / command / "kustomization.yaml").is_file()
