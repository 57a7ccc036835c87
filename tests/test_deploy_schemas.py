"""deploy/k8s rendered by kustomize and validated: the Kubernetes 1.30 and 1.37 schemas in strict mode
(``kubernetes-validate``), KEDA objects against KEDA's CRD schema (tests/data/keda), the compose file
against the Compose spec."""

from __future__ import annotations

import copy
import functools
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from compose_spec import PyCompose

from tests.support.deploy import DEPLOY, K8S, OVERLAYS, find, one, overlay, pod_spec, render

KEDA_SCHEMAS = Path(__file__).parent / "data" / "keda"
#: The oldest Kubernetes the manifests claim (docs/deploy.md) and the newest schemas bundled.
K8S_VERSIONS = ("1.30.0", "1.37.0")
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
