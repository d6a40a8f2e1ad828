# SPDX-License-Identifier: MIT
"""deploy/prometheus: promtool accepts the config and rules; the alert unit tests pass."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from fastmta import metrics
from tests.fixtures.metrics import (
    ALERT_RULES,
    PROMETHEUS_SERIES,
    WORKER_SERIES,
    alert_exprs,
    deploy_path,
    exposition_names,
    promql_names,
)
from tests.support import require_tool


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("promtool"), *args], capture_output=True, text=True, timeout=60,
                          cwd=deploy_path("prometheus"))  # fmt: skip


def test_promtool_check_config() -> None:
    result = _promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", str(ALERT_RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_alert_unit_tests() -> None:
    result = _promtool("test", "rules", "fastmta-alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_required_alerts_exist_with_severity_and_text() -> None:
    rules = {r["alert"]: r for g in yaml.safe_load(ALERT_RULES.read_text())["groups"] for r in g["rules"]}
    required = {"FastmtaInstanceDown", "FastmtaQueueGrowing", "FastmtaDeferralRatioHigh",
                "FastmtaBounceRatioHigh", "FastmtaSpoolCommitSlow", "FastmtaNoDeliveries"}  # fmt: skip
    assert required <= rules.keys()
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
    assert rules["FastmtaQueueGrowing"]["for"] == "15m"


def test_every_alert_has_a_promtool_unit_test() -> None:
    tests = yaml.safe_load(deploy_path("prometheus", "fastmta-alerts.test.yml").read_text())["tests"]
    firing = {case["alertname"] for t in tests for case in t.get("alert_rule_test", []) if case["exp_alerts"]}
    assert firing == {name for name, _ in alert_exprs()}


@pytest.fixture
def defined_names() -> Iterator[set[str]]:
    metrics.set_spool_stats_source(lambda: {"used_bytes": 1, "map_size_bytes": 2})
    try:
        yield exposition_names(generate_latest().decode()) | PROMETHEUS_SERIES | WORKER_SERIES
    finally:
        metrics.set_spool_stats_source(None)


def test_alert_rules_use_only_exported_names(defined_names: set[str]) -> None:
    for alert, expr in alert_exprs():
        names = promql_names(expr)
        assert names, alert
        assert names <= defined_names, (alert, names - defined_names)


def test_promql_name_extraction() -> None:
    expr = 'sum by (le) (rate(a_bucket{x="y{z}"}[5m] offset 1h)) / on(i) group_left(j) b > 1e3 and c_total'
    assert promql_names(expr) == {"a_bucket", "b", "c_total"}
    assert promql_names("histogram_quantile(0.99, sum(rate(d[$__rate_interval])))") == {"d"}


def test_kubernetes_scrape_config(tmp_path: Path) -> None:
    # Debian's Prometheus is built without Kubernetes discovery, so promtool checks a
    # copy with the discovery block swapped for a static target; the relabelling,
    # rule files and the rest are checked as shipped.
    cfg = yaml.safe_load(deploy_path("prometheus", "prometheus-kubernetes.yml").read_text())
    (job,) = cfg["scrape_configs"]
    assert job["job_name"] == "fastmta" and job["kubernetes_sd_configs"] == [{"role": "pod"}]
    keep = {r["source_labels"][0]: r["regex"] for r in job["relabel_configs"] if r.get("action") == "keep"}
    assert keep["__meta_kubernetes_pod_label_app_kubernetes_io_name"] == "fastmta"
    del job["kubernetes_sd_configs"]
    job["static_configs"] = [{"targets": ["fastmta-0:9025"]}]
    cfg["rule_files"] = [str(ALERT_RULES)]
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(cfg))
    result = _promtool("check", "config", str(copy))
    assert result.returncode == 0, result.stdout + result.stderr
