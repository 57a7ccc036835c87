"""The Grafana dashboard and the Prometheus alerts chart and alert only on metrics embedstream exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import prometheus_client
import yaml

from embedstream import metrics
from tests.support.deploy import DEPLOY, compose

#: Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job", "le"}


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
