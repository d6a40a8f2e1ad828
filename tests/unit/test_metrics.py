# SPDX-License-Identifier: MIT
"""Metric definitions: contract names, bounded labels, hot-path handles, scrape-time collectors."""

from __future__ import annotations

import os
import subprocess
import sys
import timeit

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from fastmta import metrics
from tests.support import ROOT

CONTRACT = {
    "fastmta_smtp_connections_total": {"listener"},
    "fastmta_smtp_connections_active": {"listener"},
    "fastmta_messages_received_total": {"listener"},
    "fastmta_messages_rejected_total": {"listener", "reason"},
    "fastmta_received_bytes_total": set(),
    "fastmta_deliveries_total": {"result"},
    "fastmta_queue_messages": {"state"},
    "fastmta_spool_commit_seconds": set(),
    "fastmta_spool_commit_batch_size": set(),
    "fastmta_delivery_seconds": set(),
    "fastmta_dns_lookups_total": {"result"},
    "fastmta_destination_connections_active": set(),
}
UNBOUNDED = {"id", "msg_id", "message_id", "rcpt", "sender", "from", "to", "address", "host", "ip", "domain"}


def test_contract_names_and_labels() -> None:
    for name, want in CONTRACT.items():
        collector = REGISTRY._names_to_collectors[name]  # noqa: SLF001
        assert isinstance(collector, MetricWrapperBase)
        assert set(collector._labelnames) == want, name  # noqa: SLF001


def test_no_label_takes_unbounded_values() -> None:
    for collector in set(REGISTRY._names_to_collectors.values()):  # noqa: SLF001
        labels = set(getattr(collector, "_labelnames", ()))
        assert not labels & UNBOUNDED, (collector, labels)


def test_alert_series_exist_at_zero() -> None:
    text = generate_latest().decode()
    for result in ("delivered", "deferred", "bounced"):
        assert f'fastmta_deliveries_total{{result="{result}"}}' in text
    for state in ("ready", "deferred", "inflight"):
        assert f'fastmta_queue_messages{{state="{state}"}}' in text
    assert "_created" not in text


def test_listener_metrics_are_prebound_and_cached() -> None:
    lm = metrics.ListenerMetrics("unit-mx")
    before = metrics.messages_received_total.labels("unit-mx")._value.get()  # noqa: SLF001
    lm.received.inc()
    lm.received.inc(4)
    assert metrics.messages_received_total.labels("unit-mx")._value.get() == before + 5  # noqa: SLF001
    assert lm.rejected("relay") is lm.rejected("relay")
    lm.rejected("relay").inc()
    lm.tls_failed.inc()
    lm.auth_failed.inc()
    text = generate_latest().decode()
    assert 'fastmta_messages_rejected_total{listener="unit-mx",reason="relay"} 1.0' in text
    assert 'fastmta_tls_handshakes_total{listener="unit-mx",result="failed"} 1.0' in text
    assert 'fastmta_tls_handshakes_total{listener="unit-mx",result="ok"} 0.0' in text
    assert 'fastmta_auth_attempts_total{listener="unit-mx",result="failed"} 1.0' in text


def test_spool_stats_source_and_build_info() -> None:
    metrics.set_spool_stats_source(lambda: {"used_bytes": 4096, "map_size_bytes": 16384, "free_bytes": 8192,
                                            "high_water_bytes": 12288})  # fmt: skip
    try:
        fams = {f.name: f for f in text_string_to_metric_families(generate_latest().decode())}
        assert fams["fastmta_spool_size_bytes"].samples[0].value == 4096
        assert fams["fastmta_spool_free_bytes"].samples[0].value == 8192
        assert fams["fastmta_spool_high_water_bytes"].samples[0].value == 12288
        assert fams["fastmta_spool_map_size_bytes"].samples[0].value == 16384
        assert fams["fastmta_spool_map_used_ratio"].samples[0].value == 0.25
    finally:
        metrics.set_spool_stats_source(None)
    fams = {f.name: f for f in text_string_to_metric_families(generate_latest().decode())}
    assert "fastmta_spool_size_bytes" not in fams
    (info,) = fams["fastmta_build_info"].samples
    assert (
        info.value == 1
        and info.labels["version"]
        and info.labels["parser"] in ("cython", "python", "unavailable")
    )


def test_off_switch_makes_hot_path_updates_noops() -> None:
    code = (
        "from fastmta import metrics as m\n"
        "lm = m.ListenerMetrics('x'); lm.received.inc(); lm.active.inc(); lm.rejected('r').inc()\n"
        "assert m.bound(m.spool_commit_seconds) is m.NOOP and lm.received is m.NOOP\n"
        "from prometheus_client import generate_latest\n"
        "assert b'listener=\"x\"' not in generate_latest()\n"
    )
    env = {**os.environ, "FASTMTA_METRICS": "off"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT, timeout=60)


def test_hot_path_update_is_cheap() -> None:
    # A generous bound (shared, noisy CI cores): the real budget is checked by bench/accept.py.
    lm = metrics.ListenerMetrics("unit-cost")
    per_call = min(timeit.repeat(lm.received.inc, number=20000, repeat=3)) / 20000
    assert per_call < 20e-6
