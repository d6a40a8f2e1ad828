# SPDX-License-Identifier: MIT
"""deploy/grafana: the dashboard's shape, variables, panels and the names its queries read."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
import yaml
from prometheus_client import generate_latest

from fastmta import metrics
from tests.fixtures.metrics import (
    DASHBOARD,
    WORKER_SERIES,
    dashboard_exprs,
    deploy_path,
    exposition_names,
    promql_names,
)

DS = {"type": "prometheus", "uid": "${datasource}"}


@pytest.fixture(scope="module")
def dash() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dash: dict) -> list[dict]:
    return [p for p in dash["panels"] if p["type"] != "row"]


def test_variables_datasource_and_instance(dash: dict) -> None:
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    inst = variables["instance"]
    assert inst["type"] == "query" and inst["datasource"] == DS
    assert inst["multi"] and inst["includeAll"]
    assert "__inputs" not in dash  # provisioning loads the file as is; no import-time inputs


def test_every_panel_uses_the_datasource_variable(dash: dict) -> None:
    for panel in _panels(dash):
        assert panel["datasource"] == DS, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DS, panel["title"]


def test_every_selector_filters_by_instance(dash: dict) -> None:
    for title, expr in dashboard_exprs():
        if title.startswith("variable"):
            continue
        for name, matchers in re.findall(r"(fastmta_\w+)(\{[^}]*\})?", expr):
            assert 'instance=~"$instance"' in matchers, (title, name)


def test_required_panels(dash: dict) -> None:
    titles = " | ".join(p["title"] for p in _panels(dash)).lower()
    for needle in ("accept rate", "delivery rate by result", "queue depth by state", "spool commit latency",
                   "batch size", "connections in", "delivery latency", "dns failures",
                   "bounces and deferrals", "rejections by reason", "dkim signatures",
                   "outbound tls policy", "mta-sts fetches"):  # fmt: skip
        assert needle in titles, needle
    exprs = " ".join(e for _, e in dashboard_exprs())
    assert "histogram_quantile(0.5, sum by (le) (rate(fastmta_spool_commit_seconds_bucket" in exprs
    assert "histogram_quantile(0.99, sum by (le) (rate(fastmta_spool_commit_seconds_bucket" in exprs
    assert "fastmta_destination_connections_active" in exprs


def test_layout_ids_unique_and_no_overlap(dash: dict) -> None:
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, p["title"]
        cells |= mine
    assert dash["uid"] == "fastmta" and dash["schemaVersion"] >= 36


@pytest.fixture
def defined_names() -> Iterator[set[str]]:
    metrics.set_spool_stats_source(lambda: {"used_bytes": 1, "map_size_bytes": 2})
    try:
        yield exposition_names(generate_latest().decode()) | WORKER_SERIES
    finally:
        metrics.set_spool_stats_source(None)


def test_dashboard_uses_only_defined_names(defined_names: set[str]) -> None:
    for title, expr in dashboard_exprs():
        names = promql_names(expr)
        assert names, title
        assert names <= defined_names, (title, names - defined_names)


def test_provisioning_files() -> None:
    ds = yaml.safe_load(deploy_path("grafana", "provisioning", "datasources", "prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    boards = yaml.safe_load(deploy_path("grafana", "provisioning", "dashboards", "fastmta.yml").read_text())
    (provider,) = boards["providers"]
    compose = yaml.safe_load(deploy_path("docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/fastmta.json:{provider['options']['path']}/fastmta.json:ro" in mounts
