# SPDX-License-Identifier: MIT
"""docs/operations.md lists every metric fastmta exports, with its type.

The names come from what a scrape would show: the exposition of
``fastmta.metrics``' registry (with a spool to report on) plus the supervisor's
per-node collector, read from their ``# TYPE`` lines.
"""

from __future__ import annotations

import re
import types
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from fastmta import metrics
from fastmta.node import supervisor

PAGE = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
ROW = re.compile(r"^\| `(fastmta_\w+)` \| (counter|gauge|histogram|summary|info) \|", re.MULTILINE)
TYPE = re.compile(r"^# TYPE (fastmta_\w+) (\w+)$", re.MULTILINE)


def exported() -> dict[str, str]:
    """name → type of every ``fastmta_*`` family a scrape can show."""
    saved = metrics._spool_stats.source
    metrics.set_spool_stats_source(
        lambda: {"used_bytes": 1.0, "map_size_bytes": 2.0, "free_bytes": 3.0, "high_water_bytes": 4.0}
    )
    try:
        text = generate_latest(metrics.REGISTRY).decode()
    finally:
        metrics.set_spool_stats_source(saved)
    node = CollectorRegistry()
    fake = types.SimpleNamespace(workers=[], flush_workers=lambda: None)
    node.register(supervisor._WorkersCollector(fake))  # type: ignore[arg-type]
    text += generate_latest(node).decode()
    return dict(TYPE.findall(text))


def test_every_metric_is_documented_with_its_type() -> None:
    names = exported()
    assert {"fastmta_messages_received_total", "fastmta_spool_size_bytes", "fastmta_workers"} <= set(names)
    documented = dict(ROW.findall(PAGE.read_text()))
    missing = sorted(set(names) - set(documented))
    assert not missing, f"docs/operations.md lacks metrics: {missing}"
    wrong = {n: (documented[n], t) for n, t in names.items() if documented[n] != t}
    assert not wrong, f"documented type differs from the exported one: {wrong}"


def test_the_page_names_no_metric_that_is_gone() -> None:
    stale = sorted(set(dict(ROW.findall(PAGE.read_text()))) - set(exported()))
    assert not stale, f"docs/operations.md lists metrics fastmta does not export: {stale}"
