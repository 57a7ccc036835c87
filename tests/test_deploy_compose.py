"""deploy/compose.yaml: it follows the Compose spec (``compose-spec``) and serves every registry model."""

from __future__ import annotations

from compose_spec import PyCompose

from embedstream import registryfile
from tests.support.deploy import DEPLOY, compose


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


def test_compose_registry_loads_and_every_model_has_a_worker() -> None:
    registry = registryfile.load(str(DEPLOY / "registry.toml"))
    commands = [s.get("command", []) for s in compose()["services"].values()]
    assert {c[2] for c in commands if c[:2] == ["worker", "--model"]} == set(registry.models)
