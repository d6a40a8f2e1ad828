# SPDX-License-Identifier: MIT
"""/metrics and /healthz of a real ``fastmta serve`` after real SMTP traffic."""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import urllib.error
import urllib.request

from tests.fixtures.metrics import (
    PROMETHEUS_SERIES,
    WORKER_SERIES,
    MetricsServer,
    alert_exprs,
    dashboard_exprs,
    exposition_names,
    promql_names,
    send_messages,
    untouched_labelled_names,
    value,
)
from tests.support import require_tool, wait_until

MESSAGES = 20


def _healthz(ms: MetricsServer) -> int:
    host, port = ms.metrics_address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_counters_equal_the_traffic_sent(metrics_server: MetricsServer) -> None:
    # The readiness probe of the test harness was one connection too; the server may
    # accept it after the probe returned, so wait until it is counted.
    wait_until(lambda: value(metrics_server.scrape(), "fastmta_smtp_connections_total", listener="mx") == 1,
               what="the readiness probe counted")  # fmt: skip
    connections_before = 1
    body_bytes = send_messages(metrics_server.smtp_port, MESSAGES, per_connection=5)
    text = metrics_server.scrape()
    assert value(text, "fastmta_messages_received_total", listener="mx") == MESSAGES
    assert value(text, "fastmta_smtp_connections_total", listener="mx") == connections_before + MESSAGES // 5
    assert value(text, "fastmta_received_bytes_total") >= body_bytes
    assert value(text, "fastmta_spool_commit_seconds_count") >= 1
    assert value(text, "fastmta_spool_commit_batch_size_sum") >= MESSAGES
    # Connections close asynchronously; the gauge returns to zero.
    wait_until(lambda: value(metrics_server.scrape(), "fastmta_smtp_connections_active", listener="mx") == 0,
               what="active connections back to 0")  # fmt: skip
    assert value(metrics_server.scrape(), "fastmta_deliveries_total") == 0


def test_queue_gauge_counts_held_messages(metrics_server: MetricsServer) -> None:
    # Delivery is on hold: every message waits in the queue (gauges refresh about once a second).
    send_messages(metrics_server.smtp_port, MESSAGES)
    wait_until(lambda: value(metrics_server.scrape(), "fastmta_queue_messages") == MESSAGES,
               what=f"fastmta_queue_messages == {MESSAGES}")  # fmt: skip


def test_rejections_are_counted_by_reason(metrics_server: MetricsServer) -> None:
    with smtplib.SMTP("127.0.0.1", metrics_server.smtp_port, timeout=30) as smtp:
        smtp.ehlo("client.test")
        for _ in range(3):
            code, _ = smtp.docmd("RCPT", "TO:<nobody@dest.test>")  # before MAIL: 503
            assert code == 503
        code, _ = smtp.docmd("MAIL", "FROM:<not an address")
        assert code == 501
    text = metrics_server.scrape()
    assert value(text, "fastmta_messages_rejected_total", listener="mx") >= 4
    assert value(text, "fastmta_messages_received_total", listener="mx") == 0


def test_spool_build_and_healthz(metrics_server: MetricsServer) -> None:
    assert _healthz(metrics_server) == 200
    text = metrics_server.scrape()
    assert value(text, "fastmta_spool_size_bytes") > 0
    assert value(text, "fastmta_spool_free_bytes") >= 0
    assert value(text, "fastmta_spool_high_water_bytes") >= value(text, "fastmta_spool_size_bytes")
    assert value(text, "fastmta_spool_map_size_bytes") >= 64 * 1024**2
    assert 0 < value(text, "fastmta_spool_map_used_ratio") <= 1
    backend = "python" if os.environ.get("FASTMTA_PURE_PYTHON") == "1" else "cython"
    assert value(text, "fastmta_build_info", parser=backend) == 1


def test_healthz_is_503_while_shutting_down(metrics_server: MetricsServer) -> None:
    # Hold a session open so shutdown waits for it (shutdown_grace), then ask /healthz.
    smtp = smtplib.SMTP("127.0.0.1", metrics_server.smtp_port, timeout=30)
    try:
        smtp.ehlo("client.test")
        metrics_server.server.signal(signal.SIGTERM)
        wait_until(lambda: _healthz(metrics_server) != 200, what="/healthz to leave 200")
        assert _healthz(metrics_server) == 503
    finally:
        smtp.close()


def test_promtool_check_metrics_on_live_output(metrics_server: MetricsServer) -> None:
    send_messages(metrics_server.smtp_port, 3)
    result = subprocess.run([require_tool("promtool"), "check", "metrics"], input=metrics_server.scrape(),
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dashboard_and_alert_name_is_exported(metrics_server: MetricsServer) -> None:
    send_messages(metrics_server.smtp_port, 2)
    live = exposition_names(metrics_server.scrape()) | PROMETHEUS_SERIES | WORKER_SERIES
    for where, expr in dashboard_exprs() + alert_exprs():
        missing = promql_names(expr) - live
        assert not missing, f"{where}: {sorted(missing)} not in live /metrics"


def test_multi_worker_node_sums_workers_and_exports_names(workers_metrics_server: MetricsServer) -> None:
    ms = workers_metrics_server
    wait_until(lambda: value(ms.scrape(), "fastmta_workers_ready") == 2, what="both workers ready")
    send_messages(ms.smtp_port, MESSAGES, per_connection=1)  # new connections spread over the workers
    # A scrape waits only half a second for each worker's values (a busy worker's are
    # up to a second old), so a loaded machine may need a few scrapes to see them all.
    wait_until(lambda: value(ms.scrape(), "fastmta_messages_received_total", listener="mx") == MESSAGES,
               what=f"{MESSAGES} messages counted over both workers")  # fmt: skip
    text = ms.scrape()
    # Families with no event yet are absent in multiprocess mode (prometheus-client
    # writes no file for them); every other name must be there.
    live = exposition_names(text) | PROMETHEUS_SERIES | untouched_labelled_names()
    for where, expr in dashboard_exprs() + alert_exprs():
        missing = promql_names(expr) - live
        assert not missing, f"{where}: {sorted(missing)} not in the supervisor's /metrics"
    exported = exposition_names(text)
    always = {"fastmta_deliveries_total", "fastmta_queue_messages", "fastmta_spool_commit_seconds_bucket",
              "fastmta_build_info", "fastmta_spool_size_bytes"} | WORKER_SERIES  # fmt: skip
    assert always <= exported, always - exported
    result = subprocess.run([require_tool("promtool"), "check", "metrics"], input=text,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
