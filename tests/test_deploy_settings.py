"""Every EMBEDSTREAM_ variable deploy/ sets is a setting with a valid value, and every port follows the settings."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import yaml

from embedstream.settings import ENV_PREFIX, Settings
from tests.support.deploy import (
    DEPLOY,
    GRPC_PORT,
    HTTP_PORT,
    OVERLAYS,
    compose,
    containers,
    env_of,
    find,
    one,
    overlay,
    pod_spec,
    port_of,
    stage,
)

SETTINGS = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}


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
        for values in stage(file, -1, "ENV"):
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
        assert port_of(container, "http") == int(env["EMBEDSTREAM_HTTP_PORT"]) == HTTP_PORT
        gateway_services = 0
        for service in find(docs, "Service"):
            if service["spec"]["selector"].get("app.kubernetes.io/component") == "gateway":
                ports = [(p["port"], p["targetPort"], p["appProtocol"]) for p in service["spec"]["ports"]]
                assert ports == [(GRPC_PORT, "grpc", "grpc"), (HTTP_PORT, "http", "http")]
                gateway_services += 1
        assert gateway_services == 2  # the ClusterIP and the headless Service
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
    assert services["gateway"]["environment"]["EMBEDSTREAM_HTTP_PORT"] == str(HTTP_PORT)
    assert f"{HTTP_PORT}:{HTTP_PORT}" in services["gateway"]["ports"]
    metrics_port = services["gateway"]["environment"]["EMBEDSTREAM_METRICS_PORT"]
    assert services["worker"]["environment"]["EMBEDSTREAM_METRICS_PORT"] == metrics_port
    assert services["worker"]["expose"] == [metrics_port]
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    assert {(c["dns_sd_configs"][0]["names"][0], c["dns_sd_configs"][0]["port"]) for c in scrape} == {
        ("gateway", int(metrics_port)),
        ("worker", int(metrics_port)),
    }
    for file in ("Dockerfile", "Dockerfile.cuda"):
        assert set(stage(file, -1, "EXPOSE")[0]) == {str(GRPC_PORT), str(HTTP_PORT), metrics_port}
