# SPDX-License-Identifier: MIT
"""What a load run measured: counts, exact latency percentiles, histograms and the report."""

from __future__ import annotations

import bisect
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastmta.loadgen.spec import LoadSpec

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
# Upper bucket edges (ms) of the printed histogram: roughly 1-2-5 steps.
HIST_EDGES_MS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000)


@dataclass
class Stats:
    """Outcome of a run; latencies in seconds, kept raw so percentiles are exact."""

    ok: int = 0
    failed: int = 0
    bytes_ok: int = 0
    connections: int = 0
    connect_failures: int = 0
    elapsed: float = 0.0
    cpu: float = 0.0  # the generator's own CPU seconds during the run (all its processes)
    connect: array[float] = field(default_factory=lambda: array("d"))  # TCP connect → banner
    data: array[float] = field(default_factory=lambda: array("d"))  # end of DATA sent → its reply
    txn: array[float] = field(default_factory=lambda: array("d"))  # MAIL sent → reply to end of DATA
    errors: Counter[str] = field(default_factory=Counter)  # reply code or failure kind → count

    def merge(self, other: Stats) -> None:
        self.ok += other.ok
        self.failed += other.failed
        self.bytes_ok += other.bytes_ok
        self.connections += other.connections
        self.connect_failures += other.connect_failures
        self.elapsed = max(self.elapsed, other.elapsed)
        self.cpu += other.cpu
        self.connect.extend(other.connect)
        self.data.extend(other.data)
        self.txn.extend(other.txn)
        self.errors.update(other.errors)

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    def summary(self, spec: LoadSpec | None = None) -> dict[str, Any]:
        """The JSON report: throughput, percentiles and histograms in ms, errors by code."""
        out: dict[str, Any] = {}
        if spec is not None:
            out["target"] = f"[{spec.host}]:{spec.port}" if ":" in spec.host else f"{spec.host}:{spec.port}"
            out["connections"] = spec.connections
            out["per_connection"] = spec.per_connection
            out["size"] = round(sum(map(len, spec.messages)) / max(1, len(spec.messages)))
            out["pipelining"] = spec.pipelining
            out["starttls"] = spec.starttls
            out["tls"] = spec.tls
            out["auth"] = spec.auth is not None
            out["proxy"] = spec.proxy or None
        out.update(
            ok=self.ok,
            failed=self.failed,
            sessions=self.connections,
            connect_failures=self.connect_failures,
            elapsed_s=round(self.elapsed, 4),
            cpu_s=round(self.cpu, 4),
            msgs_per_s=round(self.rate, 1),
            mb_per_s=round(self.bytes_ok / self.elapsed / 1e6, 3) if self.elapsed > 0 else 0.0,
            latency_ms={k: latency_summary(getattr(self, k)) for k in ("connect", "data", "txn")},
            histogram_ms={k: histogram(getattr(self, k)) for k in ("connect", "data", "txn")},
            errors=dict(sorted(self.errors.items())),
        )
        return out


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, int(-(-q * len(sorted_values) // 100)) - 1))
    return sorted_values[rank]


def latency_summary(values: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max/mean in milliseconds."""
    s = sorted(values)
    out = {f"p{q:g}": round(percentile(s, q) * 1e3, 3) for q in PERCENTILES}
    out["max"] = round(s[-1] * 1e3, 3) if s else 0.0
    out["mean"] = round(sum(s) / len(s) * 1e3, 3) if s else 0.0
    out["n"] = len(s)
    return out


def histogram(values: Sequence[float]) -> list[list[float]]:
    """[[upper edge ms, count], …] over HIST_EDGES_MS, plus [inf, count] for the rest."""
    counts = [0] * (len(HIST_EDGES_MS) + 1)
    edges = [e / 1e3 for e in HIST_EDGES_MS]
    for v in values:
        counts[bisect.bisect_left(edges, v)] += 1
    return [[e, c] for e, c in zip((*HIST_EDGES_MS, float("inf")), counts, strict=True) if c]


def format_report(summary: dict[str, Any]) -> str:
    """The human-readable report of ``Stats.summary``."""
    lines = [
        f"target {summary.get('target', '?')}  connections {summary.get('connections')}"
        f"  msgs/conn {summary.get('per_connection')}  size {summary.get('size')} B"
        f"  pipelining {'on' if summary.get('pipelining') else 'off'}"
        f"  tls {'implicit' if summary.get('tls') else 'starttls' if summary.get('starttls') else 'off'}"
        f"{'  auth' if summary.get('auth') else ''}",
        f"accepted {summary['ok']}  failed {summary['failed']}  sessions {summary['sessions']}"
        f"  connect failures {summary['connect_failures']}  in {summary['elapsed_s']:.2f} s",
        f"throughput {summary['msgs_per_s']:.1f} msg/s  {summary['mb_per_s']:.2f} MB/s",
        "",
        f"{'latency (ms)':<24}{'p50':>9}{'p90':>9}{'p99':>9}{'p99.9':>9}{'max':>9}{'n':>9}",
    ]
    names = {"connect": "connect → banner", "data": "end of DATA → 250", "txn": "MAIL → 250 (transaction)"}
    for key, label in names.items():
        s = summary["latency_ms"][key]
        lines.append(
            f"{label:<24}{s['p50']:>9.2f}{s['p90']:>9.2f}{s['p99']:>9.2f}{s['p99.9']:>9.2f}"
            f"{s['max']:>9.2f}{s['n']:>9}"
        )
    hist = summary["histogram_ms"]["txn"]
    if hist:
        lines += ["", "transaction latency histogram"]
        top = max(c for _, c in hist)
        for edge, c in hist:
            label = f"<= {edge:g} ms" if edge != float("inf") else f"> {HIST_EDGES_MS[-1]:g} ms"
            lines.append(f"  {label:>12} {c:>9}  {'#' * max(1, round(40 * c / top))}")
    if summary["errors"]:
        lines += ["", "errors: " + ", ".join(f"{k} ×{v}" for k, v in summary["errors"].items())]
    return "\n".join(lines)
