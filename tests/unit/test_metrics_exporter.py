# SPDX-License-Identifier: MIT
"""The /metrics + /healthz exporter over a real loopback socket (no server process)."""

from __future__ import annotations

import gzip
import http.client
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from fastmta import metrics
from fastmta.node.exporter import Exporter, serve_metrics
from tests.support import ROOT, free_port


def _get(
    exporter: Exporter, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    host, port = exporter.address
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.fixture
def exporter() -> Iterator[Exporter]:
    healthy = threading.Event()
    exp = serve_metrics(("127.0.0.1", 0), healthy.is_set)
    assert isinstance(exp, Exporter)
    exp.healthy = healthy  # type: ignore[attr-defined]
    yield exp
    exp.close()


def test_metrics_text_exposition_has_contract_names(exporter: Exporter) -> None:
    status, headers, body = _get(exporter, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    for name in ("fastmta_messages_received_total", "fastmta_spool_commit_seconds",
                 "fastmta_queue_messages", "fastmta_destination_connections_active"):  # fmt: skip
        assert f"# TYPE {name}" in text or f"# TYPE {name.removesuffix('_total')}" in text


def test_openmetrics_negotiation_and_gzip(exporter: Exporter) -> None:
    status, headers, body = _get(
        exporter, "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert status == 200 and headers["content-type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    status, headers, body = _get(exporter, "/metrics", {"Accept-Encoding": "gzip"})
    assert headers["content-encoding"] == "gzip"
    assert b"fastmta_received_bytes_total" in gzip.decompress(body)


def test_name_filter(exporter: Exporter) -> None:
    _, _, body = _get(exporter, "/metrics?name[]=fastmta_received_bytes_total")
    names = {line.split()[2] for line in body.decode().splitlines() if line.startswith("# TYPE")}
    assert {n.removesuffix("_total") for n in names} == {"fastmta_received_bytes"}


def test_healthz_follows_callback(exporter: Exporter) -> None:
    assert _get(exporter, "/healthz")[0] == 503
    exporter.healthy.set()  # type: ignore[attr-defined]
    status, _, body = _get(exporter, "/healthz")
    assert (status, body) == (200, b"ok\n")
    exporter.healthy.clear()  # type: ignore[attr-defined]
    assert _get(exporter, "/healthz")[0] == 503


def test_unknown_path_is_404(exporter: Exporter) -> None:
    assert _get(exporter, "/nope")[0] == 404


def test_custom_registry_and_ipv6() -> None:
    registry = CollectorRegistry()
    Counter("only_this", "x", registry=registry).inc(3)
    exp = serve_metrics(("::1", 0), lambda: True, registry=registry)
    assert isinstance(exp, Exporter)
    try:
        with urllib.request.urlopen(f"http://[::1]:{exp.address[1]}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert "only_this_total 3.0" in text and "fastmta_" not in text
    finally:
        exp.close()


def test_disabled_and_port_in_use() -> None:
    disabled = serve_metrics(None, lambda: True)
    assert disabled.address is None
    disabled.close()
    port = free_port()
    first = serve_metrics(("127.0.0.1", port), lambda: True)
    try:
        with pytest.raises(OSError):
            serve_metrics(("127.0.0.1", port), lambda: True)
    finally:
        first.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_failing_spool_stats_source_does_not_break_the_scrape(exporter: Exporter) -> None:
    def closed() -> dict[str, float]:
        raise RuntimeError("environment closed")

    metrics.set_spool_stats_source(closed)
    try:
        status, _, body = _get(exporter, "/metrics")
    finally:
        metrics.set_spool_stats_source(None)
    assert status == 200
    assert b"fastmta_messages_received_total" in body and b"fastmta_spool_size_bytes" not in body


def test_concurrent_scrapes(exporter: Exporter) -> None:
    results: list[int] = []

    def scrape() -> None:
        for _ in range(5):
            results.append(_get(exporter, "/metrics")[0])

    threads = [threading.Thread(target=scrape) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [200] * 40


_WORKER = """
from fastmta import metrics
lm = metrics.ListenerMetrics("mx")
lm.received.inc(3)
lm.active.inc()
metrics.bound(metrics.spool_commit_seconds).observe(0.004)
"""

_EXPORTER = """
import sys, urllib.request
from fastmta.node.exporter import serve_metrics
exp = serve_metrics(("127.0.0.1", 0), lambda: True)
with urllib.request.urlopen("http://%s:%d/metrics" % exp.address, timeout=10) as r:
    sys.stdout.write(r.read().decode())
exp.close()
"""


def test_multiprocess_mode_aggregates_workers(tmp_path: Path) -> None:
    # Worker processes share PROMETHEUS_MULTIPROC_DIR; any one of them serves the sum.
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", _WORKER], env=env, cwd=ROOT, check=True, timeout=60)
    out = subprocess.run([sys.executable, "-c", _EXPORTER], env=env, cwd=ROOT, check=True, timeout=60,
                         capture_output=True, text=True).stdout  # fmt: skip
    fams = {f.name: f for f in text_string_to_metric_families(out)}
    (received,) = [s for s in fams["fastmta_messages_received"].samples if s.labels == {"listener": "mx"}]
    assert received.value == 6
    count = [s for s in fams["fastmta_spool_commit_seconds"].samples if s.name.endswith("_count")]
    assert count[0].value == 2
    assert sum(s.value for s in fams["fastmta_smtp_connections_active"].samples) == 2
    assert "fastmta_build_info" in fams


def test_head_and_other_methods(exporter: Exporter) -> None:
    host, port = exporter.address
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("HEAD", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200 and int(resp.getheader("Content-Length") or 0) > 0
        assert resp.read() == b""
        conn.request("POST", "/metrics", body=b"x")  # same keep-alive connection
        resp = conn.getresponse()
        assert resp.status == 501
        resp.read()
    finally:
        conn.close()
