# SPDX-License-Identifier: MIT
"""Buffered worker metrics: what a flush writes is what prometheus-client's own multiprocess mode reads."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from tests.support import ROOT

# Run in a fresh interpreter: install() must precede every metric's creation.
WORKER = textwrap.dedent(
    """
    import sys
    from fastmta.node import worker_metrics
    worker_metrics.install(sys.argv[1])
    from prometheus_client import Counter, Gauge, Histogram
    c = Counter("t_msgs", "m", ["listener"])
    g = Gauge("t_active", "a", multiprocess_mode="livesum")
    h = Histogram("t_secs", "s", buckets=(0.1, 1.0))
    c.labels("mx").inc(3)
    g.set(2)
    h.observe(0.05)
    h.observe(0.5)
    h.observe(7)
    worker_metrics.flush()
    c.labels("mx").inc()  # after the flush: not in the files until the next one
    if sys.argv[2] == "twice":
        worker_metrics.flush()
    """
)


def _scrape(directory: Path, mode: str) -> str:
    r = subprocess.run([sys.executable, "-c", WORKER, str(directory), mode], cwd=ROOT, capture_output=True,
                       timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return generate_latest(registry).decode()


def test_flushed_values_read_back_through_multiprocess_collector(tmp_path: Path) -> None:
    text = _scrape(tmp_path, "once")
    assert 't_msgs_total{listener="mx"} 3.0' in text
    assert "t_active 2.0" in text  # a livesum gauge until the supervisor marks the process dead
    assert 't_secs_bucket{le="0.1"} 1.0' in text and 't_secs_bucket{le="1.0"} 2.0' in text
    assert 't_secs_bucket{le="+Inf"} 3.0' in text and "t_secs_count 3.0" in text
    assert "t_secs_sum 7.55" in text


def test_a_later_flush_writes_what_changed(tmp_path: Path) -> None:
    assert 't_msgs_total{listener="mx"} 4.0' in _scrape(tmp_path, "twice")
