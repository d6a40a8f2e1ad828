# SPDX-License-Identifier: MIT
"""Webhook metrics scraped from a real ``fastmta serve`` (``/metrics``) while its receiver
fails and comes back, and ``max_backlog`` end to end: a receiver that is down while more
events than the bound are journalled keeps only the newest ones, the rest are counted,
logged and raise the alert (``promtool test rules`` on the scraped values), and the kept
ones arrive once it is back."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import yaml

from tests.fixtures.http import WebhookReceiver, relay_config, send_each, webhook_table
from tests.fixtures.metrics import ALERT_RULES, scrape, value
from tests.fixtures.server import Running, serve_fastmta
from tests.fixtures.sink import Sink
from tests.support import require_tool, wait_until

METRICS = '[metrics]\naddress = "127.0.0.1:{port_metrics}"\n'
EVENTS = "fastmta_webhook_events_total"
BACKLOG = "fastmta_webhook_backlog_events"
POSTS = "fastmta_webhook_delivery_seconds_count"
Scrape = Callable[[], str]


def _serve(tmp: Path, sink_port: int, hook: WebhookReceiver, **keys: str) -> tuple[Running, Scrape]:
    keys = {"events": '["delivered"]', "batch_size": "10", "max_delay": '"100ms"', "timeout": '"2s"', **keys}
    table = webhook_table("hooked", hook.url, **keys)
    srv = serve_fastmta(tmp, relay_config(sink_port, table, extra=METRICS), ports=("metrics",))
    return srv, lambda: scrape(("127.0.0.1", srv.ports["metrics"]))


def _ours(text: str, name: str, **labels: str) -> float:
    return value(text, name, webhook="hooked", **labels)


def test_event_counts_backlog_and_post_count_while_failing_and_after(
    tmp_path: Path,
    relay_box: Sink,
    sink_port: int,
    webhook_receiver: Callable[..., WebhookReceiver],
) -> None:
    hook = webhook_receiver(mode="fail")
    srv, metrics = _serve(tmp_path, sink_port, hook)

    def steady() -> tuple[int, str]:
        """A scrape that no POST overlapped (the receiver saw as many before as after)."""
        while True:
            n, text = hook.attempts, metrics()
            if hook.attempts == n:
                return n, text

    try:
        send_each(srv.host, srv.port, [f"m{i}@a.test" for i in range(4)])
        relay_box.wait_messages(4)
        wait_until(lambda: _ours(metrics(), BACKLOG) == 4, 60, "4 events journalled")
        wait_until(lambda: _ours(metrics(), POSTS) >= 1, 60, "a failed POST")
        n1, text1 = steady()
        wait_until(lambda: hook.attempts > n1, 60, "another POST")
        n2, text2 = steady()
        # each POST since all four were journalled carried them all (one batch); none acknowledged
        assert _ours(text2, EVENTS, result="failed") - _ours(text1, EVENTS, result="failed") == 4 * (n2 - n1)
        assert _ours(text2, EVENTS, result="delivered") == 0 and _ours(text2, BACKLOG) == 4
        assert _ours(text2, POSTS) == n2  # the latency histogram counts every POST
        hook.mode = "ok"
        assert len(hook.wait_events(4)) == 4
        wait_until(lambda: _ours(metrics(), BACKLOG) == 0, 30, "the backlog gauge at 0")
        n3, text3 = steady()
        assert _ours(text3, EVENTS, result="delivered") == 4
        assert _ours(text3, EVENTS, result="failed") == _ours(text2, EVENTS, result="failed") + 4 * (
            n3 - 1 - n2
        )
        assert _ours(text3, EVENTS, result="dropped") == 0 and _ours(text3, POSTS) == n3
    finally:
        srv.proc.stop()


def _alert_fires(tmp: Path, dropped_before: float, dropped_after: float) -> subprocess.CompletedProcess[str]:
    """``promtool test rules`` of the repository's alert rules on the two scraped values."""
    series = (
        'fastmta_webhook_events_total{job="fastmta", instance="mx1:9025", webhook="hooked", result="dropped"}'
    )
    test = {
        "rule_files": [str(ALERT_RULES)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": series, "values": f"{dropped_before:g}x10 {dropped_after:g}x20"}],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "FastmtaWebhookEventsDropped", "exp_alerts": []},
                {"eval_time": "15m", "alertname": "FastmtaWebhookEventsDropped", "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "job": "fastmta", "instance": "mx1:9025",
                                   "webhook": "hooked"},
                    "exp_annotations": {
                        "summary": "webhook hooked on mx1:9025 lost events",
                        "description": f"{dropped_after - dropped_before:g} events went past max_backlog"
                                       " in the last hour and will never be sent to it.",
                    },
                }]},
            ],
        }],
    }  # fmt: skip
    path = tmp / "webhook-alert.test.yml"
    path.write_text(yaml.safe_dump(test))
    return subprocess.run([require_tool("promtool"), "test", "rules", str(path)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def test_max_backlog_caps_counts_logs_alerts_and_the_kept_events_arrive(
    tmp_path: Path,
    relay_box: Sink,
    sink_port: int,
    webhook_receiver: Callable[..., WebhookReceiver],
) -> None:
    hook = webhook_receiver(start=False)  # down: connection refused
    srv, metrics = _serve(tmp_path, sink_port, hook, max_backlog="5")
    try:
        before = _ours(metrics(), EVENTS, result="dropped")
        send_each(srv.host, srv.port, [f"k{i}@a.test" for i in range(8)])
        relay_box.wait_messages(8)
        wait_until(lambda: len(srv.proc.events("delivered")) == 8, 30, "8 delivered lines")
        wait_until(lambda: _ours(metrics(), EVENTS, result="dropped") == 3, 60, "3 dropped")
        text = metrics()
        assert _ours(text, BACKLOG) == 5  # capped at max_backlog
        logged = re.findall(r"webhook hooked: (\d+) event\(s\) dropped past max_backlog", srv.proc.stderr())
        assert sum(map(int, logged)) == 3, logged  # one line per read that found a gap
        fired = _alert_fires(tmp_path, before, _ours(text, EVENTS, result="dropped"))
        assert fired.returncode == 0, fired.stdout + fired.stderr
        hook.start()
        kept = [(r["id"], r["rcpt"]) for r in srv.proc.events("delivered")][-5:]
        assert [(e["id"], e["rcpt"]) for e in hook.wait_events(5)] == kept  # the newest five, in order
        wait_until(lambda: _ours(metrics(), BACKLOG) == 0, 30, "the backlog gauge at 0")
        assert _ours(metrics(), EVENTS, result="dropped") == 3
    finally:
        srv.proc.stop()
