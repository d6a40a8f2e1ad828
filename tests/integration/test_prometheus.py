# SPDX-License-Identifier: MIT
"""A real Prometheus server scrapes a real ``fastmta serve`` and answers queries about it.

The shipped alert rules are loaded into that Prometheus (they must load and
evaluate healthily), and every dashboard query is run through its API, so a
PromQL syntax error in deploy/ fails here.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.metrics import ALERT_RULES, MetricsServer, dashboard_exprs, send_messages
from tests.support import free_port, require_tool, stop_process, wait_port, wait_until

MESSAGES = 20


class Prometheus:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                doc = json.load(resp)
        except urllib.error.HTTPError as e:
            doc = json.load(e)
        assert doc["status"] == "success", (path, params, doc)
        return doc["data"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base}/-/ready", timeout=5) as resp:
                return int(resp.status) == 200
        except OSError:  # refused, reset, or a slow answer (URLError and TimeoutError are OSErrors)
            return False

    def scalar(self, query: str) -> float | None:
        result = self.api("query", query=query)["result"]
        return float(result[0]["value"][1]) if result else None


@pytest.fixture
def prometheus(metrics_server: MetricsServer, tmp_path: Path) -> Iterator[Prometheus]:
    port = free_port()
    host, mport = metrics_server.metrics_address
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERT_RULES)],
        "scrape_configs": [{"job_name": "fastmta", "static_configs": [{"targets": [f"{host}:{mport}"]}]}],
    }
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(config))
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [require_tool("prometheus"), f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_port("127.0.0.1", port, timeout=30, proc=proc)
        prom = Prometheus(port)
        wait_until(prom.ready, timeout=30, what="Prometheus /-/ready")
        yield prom
    finally:
        stop_process(proc, 15)
        log.close()


def test_prometheus_scrapes_fastmta_and_answers_queries(
    metrics_server: MetricsServer, prometheus: Prometheus
) -> None:
    send_messages(metrics_server.smtp_port, MESSAGES)
    query = 'sum(fastmta_messages_received_total{job="fastmta",listener="mx"})'
    wait_until(lambda: prometheus.scalar(query) == MESSAGES, timeout=30, what=f"{query} == {MESSAGES}")
    assert prometheus.scalar('up{job="fastmta"}') == 1
    names = set(prometheus.api("label/__name__/values"))
    assert {
        "fastmta_messages_received_total",
        "fastmta_spool_commit_seconds_bucket",
        "fastmta_build_info",
    } <= names

    # The shipped alert rules load and evaluate without errors against live data.
    def rules_evaluated() -> bool:
        groups = prometheus.api("rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return bool(rules) and all(r["health"] == "ok" for r in rules)

    wait_until(rules_evaluated, timeout=30, what="alert rules evaluated with health ok")
    firing = [a["labels"]["alertname"] for a in prometheus.api("alerts")["alerts"]]
    assert "FastmtaInstanceDown" not in firing


def test_every_dashboard_query_runs(prometheus: Prometheus) -> None:
    wait_until(lambda: prometheus.scalar('up{job="fastmta"}') == 1, timeout=30, what="first scrape")
    # The dashboard's instance selector: label_values(fastmta_build_info, instance).
    instances = prometheus.api("label/instance/values", **{"match[]": "fastmta_build_info"})
    assert len(instances) == 1 and instances[0].startswith("127.0.0.1:")
    for title, expr in dashboard_exprs():
        if title.startswith("variable"):
            continue
        query = expr.replace("$instance", ".*").replace("$__rate_interval", "1m")
        prometheus.api("query", query=query)  # asserts status "success" (a parse error is "error")
