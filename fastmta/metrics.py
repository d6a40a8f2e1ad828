# SPDX-License-Identifier: MIT
"""Every metric fastmta exports, defined once (each one documented in docs/operations.md).

Names and labels here are a public contract: the Grafana dashboard and the alert
rules in ``deploy/`` read them. No label takes an unbounded set of values (no
message ids, no addresses, no host names).

Hot paths (accept, commit) touch pre-bound children from :func:`bound` or
:class:`ListenerMetrics`, never ``.labels()`` per message. ``FASTMTA_METRICS=off``
in the environment turns those hot-path updates into no-ops, so a benchmark can
measure what metrics cost (the budget is 5 % of accept throughput).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import fastmta

# ``*_created`` series double the scrape and nothing here reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_DELIVERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

smtp_connections_total = Counter(
    "fastmta_smtp_connections_total", "Inbound SMTP connections accepted", ["listener"]
)
smtp_connections_active = Gauge(
    "fastmta_smtp_connections_active",
    "Inbound SMTP connections open now",
    ["listener"],
    multiprocess_mode="livesum",
)
messages_received_total = Counter(
    "fastmta_messages_received_total", "Messages accepted and committed to the spool", ["listener"]
)
messages_rejected_total = Counter(
    "fastmta_messages_rejected_total", "Commands or messages refused", ["listener", "reason"]
)
received_bytes_total = Counter("fastmta_received_bytes_total", "Bytes of accepted messages")
deliveries_total = Counter(
    "fastmta_deliveries_total", "Per-recipient delivery attempts by result", ["result"]
)
queue_messages = Gauge(
    "fastmta_queue_messages", "Messages in the queue by state", ["state"], multiprocess_mode="livesum"
)
spool_commit_seconds = Histogram(
    "fastmta_spool_commit_seconds", "Time of one group commit (write + fsync)", buckets=_LATENCY_BUCKETS
)
spool_commit_batch_size = Histogram(
    "fastmta_spool_commit_batch_size", "Operations per group commit", buckets=_BATCH_BUCKETS
)
delivery_seconds = Histogram(
    "fastmta_delivery_seconds", "Time of one delivery transaction", buckets=_DELIVERY_BUCKETS
)
dns_lookups_total = Counter("fastmta_dns_lookups_total", "DNS lookups by result", ["result"])
destination_connections_active = Gauge(
    "fastmta_destination_connections_active", "Outbound connections open now", multiprocess_mode="livesum"
)
delivery_connections_total = Counter(
    "fastmta_delivery_connections_total",
    "Outbound SMTP connection attempts by result (ok|refused|timeout|greeting)",
    ["result"],
)

# --- beyond the core set above: what an operator needs (names are public once released) ---

_DNS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

tls_handshakes_total = Counter(
    "fastmta_tls_handshakes_total",
    "Inbound TLS handshakes (STARTTLS or implicit) by result",
    ["listener", "result"],
)
auth_attempts_total = Counter(
    "fastmta_auth_attempts_total", "Inbound AUTH attempts by result", ["listener", "result"]
)
delivery_failures_total = Counter(
    "fastmta_delivery_failures_total",
    "Per-recipient deferrals and bounces by bounce class",
    ["result", "bounce_class"],
)
dns_lookup_seconds = Histogram(
    "fastmta_dns_lookup_seconds",
    "Time of one DNS lookup (cache misses only) by record type",
    ["type"],
    buckets=_DNS_BUCKETS,
)
scheduler_shard_depth = Gauge(
    "fastmta_scheduler_shard_depth",
    "Recipients waiting in each scheduler shard (ready + deferred)",
    ["shard"],
    multiprocess_mode="livesum",
)
spool_quarantined_total = Counter(
    "fastmta_spool_quarantined_total", "Unreadable spool records set aside (at recovery or on read)"
)
dkim_signatures_total = Counter(
    "fastmta_dkim_signatures_total",
    "DKIM signatures by algorithm and result (signed|exists|error)",
    ["algorithm", "result"],
)
dkim_sign_seconds = Histogram(
    "fastmta_dkim_sign_seconds",
    "CPU time to sign one message (canonicalisation, body hash, every signature)",
    buckets=_LATENCY_BUCKETS,
)
webhook_events_total = Counter(
    "fastmta_webhook_events_total",
    "Webhook events by result (delivered | failed: in a POST not acknowledged | dropped: past max_backlog)",
    ["webhook", "result"],
)
webhook_backlog_events = Gauge(
    "fastmta_webhook_backlog_events",
    "Events on disk not yet acknowledged by the webhook",
    ["webhook"],
    multiprocess_mode="livesum",
)
webhook_delivery_seconds = Histogram(
    "fastmta_webhook_delivery_seconds",
    "Time of one webhook POST, answer included",
    ["webhook"],
    buckets=_DELIVERY_BUCKETS,
)
http_requests_total = Counter(
    "fastmta_http_requests_total", "HTTP API requests by endpoint and status code", ["endpoint", "code"]
)
pool_deliveries_total = Counter(
    "fastmta_pool_deliveries_total",
    'Per-recipient delivery attempt results by sending pool ([[pool]] names and "default")',
    ["pool", "result"],
)
suppressed_total = Counter(
    "fastmta_suppressed_total", "Recipients failed untried because they are on the suppression list"
)
complaints_total = Counter(
    "fastmta_complaints_total", "Feedback-loop complaints (ARF reports with a valid X-Fastmta-Ref) applied"
)
tls_policy_total = Counter(
    "fastmta_tls_policy_total",
    "Outbound TLS sessions by the policy applied (mta-sts-enforce|mta-sts-testing|dane|required|"
    "opportunistic|none) and result (ok|failed)",
    ["policy", "result"],
)
mta_sts_fetches_total = Counter(
    "fastmta_mta_sts_fetches_total",
    "MTA-STS policy fetches by result (ok|http_error|tls_error|invalid|too_large|timeout|error)",
    ["result"],
)
tls_rpt_reports_total = Counter(
    "fastmta_tls_rpt_reports_total",
    "TLS-RPT aggregate reports by method (mailto|https) and result (sent|failed)",
    ["method", "result"],
)
TLS_POLICIES = ("mta-sts-enforce", "mta-sts-testing", "dane", "required", "opportunistic", "none")

cluster_redis_up = Gauge(
    "fastmta_cluster_redis_up",
    "1 while the cluster's Redis answers, 0 while this node runs on its fallback",
    ["node"],
    multiprocess_mode="max",
)
cluster_fallback = Gauge(
    "fastmta_cluster_fallback",
    "1 while Redis is away and this node keeps to its share of each limit (or pauses)",
    ["node"],
    multiprocess_mode="max",
)
cluster_nodes = Gauge(
    "fastmta_cluster_nodes",
    "Nodes whose heartbeat Redis saw in the last minute",
    ["node"],
    multiprocess_mode="max",
)
cluster_leases = Gauge(
    "fastmta_cluster_leases",
    "Destination connection leases this node holds (one per running delivery worker)",
    ["node"],
    multiprocess_mode="livesum",
)
cluster_redis_errors_total = Counter(
    "fastmta_cluster_redis_errors_total", "Redis calls that failed or timed out", ["node"]
)
cluster_suppression_in_sync = Gauge(
    "fastmta_cluster_suppression_in_sync",
    "1 while this node's suppression list follows the cluster's (Redis answers, nothing left to publish)",
    ["node"],
    multiprocess_mode="max",
)
cluster_suppression_outbox = Gauge(
    "fastmta_cluster_suppression_outbox",
    "Suppression-list changes made on this node and not yet published to Redis",
    ["node"],
    multiprocess_mode="max",
)
cluster_suppression_changes_total = Counter(
    "fastmta_cluster_suppression_changes_total",
    "Suppression-list changes published to Redis and changes from Redis that altered this node's list",
    ["node", "direction"],
)

# Series that dashboards and alerts compare must exist (at 0) before the first event:
# rate() over an absent series is "no data", not 0, and silences alerts. Under
# PROMETHEUS_MULTIPROC_DIR a labelled family with no child is not exported at all.
for _result in ("delivered", "deferred", "bounced"):
    deliveries_total.labels(_result)
for _state in ("ready", "deferred", "inflight"):
    queue_messages.labels(_state)
for _result in ("ok", "refused", "timeout", "greeting"):
    delivery_connections_total.labels(_result)
for _result in ("delivered", "deferred", "bounced"):
    pool_deliveries_total.labels("default", _result)
for _policy in TLS_POLICIES:
    for _result in ("ok", "failed"):
        tls_policy_total.labels(_policy, _result)


# --- hot-path handles ------------------------------------------------------------

ENABLED = os.environ.get("FASTMTA_METRICS", "on").strip().lower() not in ("off", "0", "false", "no")


class _Noop:
    """Stands in for a metric child when FASTMTA_METRICS=off: every update is a no-op."""

    __slots__ = ()

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


NOOP: Any = _Noop()


def bound(metric: Any, *labels: str) -> Any:
    """A child to update on a hot path: bind labels once, keep the handle, call ``.inc()``.

    Returns a no-op when FASTMTA_METRICS=off (the benchmark switch).
    """
    if not ENABLED:
        return NOOP
    return metric.labels(*labels) if labels else metric


class _Hot:
    """A bound counter or gauge on the receive path: ``inc``/``dec`` add straight to the
    value prometheus-client keeps (its lock included). ``labels()`` already made the
    checks its ``inc`` repeats on every call: half the Python frames per update, and a
    new connection's message updates five of these."""

    __slots__ = ("_add",)

    def __init__(self, child: Any) -> None:
        self._add = child._value.inc  # noqa: SLF001

    def inc(self, amount: float = 1) -> None:
        self._add(amount)

    def dec(self, amount: float = 1) -> None:
        self._add(-amount)


def _hot(child: Any) -> Any:
    return child if child is NOOP else _Hot(child)


class ListenerMetrics:
    """Every per-listener child a session touches, bound once per listener.

    ``rejected(reason)`` caches its child; reasons must come from a fixed set
    (the reply catalogue), never from peer input.
    """

    __slots__ = ("name", "connections", "active", "received", "received_bytes",
                 "tls_ok", "tls_failed", "auth_ok", "auth_failed", "_rejected")  # fmt: skip

    def __init__(self, listener: str) -> None:
        self.name = listener
        self.connections = _hot(bound(smtp_connections_total, listener))
        self.active = _hot(bound(smtp_connections_active, listener))
        self.received = _hot(bound(messages_received_total, listener))
        self.received_bytes = _hot(bound(received_bytes_total))
        self.tls_ok = bound(tls_handshakes_total, listener, "ok")
        self.tls_failed = bound(tls_handshakes_total, listener, "failed")
        self.auth_ok = bound(auth_attempts_total, listener, "ok")
        self.auth_failed = bound(auth_attempts_total, listener, "failed")
        self._rejected: dict[str, Any] = {}

    def rejected(self, reason: str) -> Any:
        child = self._rejected.get(reason)
        if child is None:
            child = self._rejected[reason] = bound(messages_rejected_total, self.name, reason)
        return child


# --- values read at scrape time ----------------------------------------------------


class _SpoolStatsCollector(Collector):
    """Spool data, free pages and LMDB map use, asked of the spool at each scrape (exporter thread)."""

    def __init__(self) -> None:
        self.source: Callable[[], Mapping[str, float]] | None = None

    def collect(self) -> Iterator[Metric]:
        source = self.source
        if source is None:
            return
        try:
            stats = source()
            used, map_size = float(stats["used_bytes"]), float(stats["map_size_bytes"])
        except Exception:  # spool closing or reopening: these gauges skip a scrape, the rest stays
            return
        yield GaugeMetricFamily(
            "fastmta_spool_size_bytes", "Bytes of live spool data (LMDB pages the databases hold)", used
        )
        if "free_bytes" in stats:
            yield GaugeMetricFamily(
                "fastmta_spool_free_bytes",
                "Free pages inside the spool file: reused before the file grows, so free space",
                float(stats["free_bytes"]),
            )
            yield GaugeMetricFamily(
                "fastmta_spool_high_water_bytes",
                "LMDB's high-water mark: the spool file never shrinks below it",
                float(stats["high_water_bytes"]),
            )
        yield GaugeMetricFamily("fastmta_spool_map_size_bytes", "Current LMDB map size", map_size)
        yield GaugeMetricFamily(
            "fastmta_spool_map_used_ratio", "Live spool data over map size (the map grows by itself)",
            used / map_size if map_size else 0.0,
        )  # fmt: skip


class _BuildInfoCollector(Collector):
    """``fastmta_build_info{version,parser,python} 1``: which build is running where."""

    def collect(self) -> Iterator[Metric]:
        try:
            parser = str(fastmta.parser_backend)
        except ImportError:
            parser = "unavailable"
        info = GaugeMetricFamily(
            "fastmta_build_info", "fastmta version, parser backend and Python version",
            labels=["version", "parser", "python"],
        )  # fmt: skip
        info.add_metric([fastmta.__version__, parser, ".".join(map(str, sys.version_info[:3]))], 1.0)
        yield info


_spool_stats = _SpoolStatsCollector()
_build_info = _BuildInfoCollector()
REGISTRY.register(_spool_stats)
REGISTRY.register(_build_info)


def set_spool_stats_source(source: Callable[[], Mapping[str, float]] | None) -> None:
    """Where scrapes read spool stats: ``source()`` returns ``used_bytes`` (live data) and
    ``map_size_bytes``, and may add ``free_bytes`` and ``high_water_bytes``.

    It runs on the exporter thread at each scrape, so it must be thread-safe and
    cheap (LMDB ``env.info()``/``env.stat()`` are); ``None`` removes the gauges.
    """
    _spool_stats.source = source


def default_registry(first: Collector | None = None) -> CollectorRegistry:
    """The registry to expose: this process's, or every worker's under PROMETHEUS_MULTIPROC_DIR.

    ``first`` (multiprocess only) is collected before the workers' files are read:
    the supervisor's collector asks the workers to write their values out.
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        if first is not None:
            registry.register(first)
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(_spool_stats)
        registry.register(_build_info)
        return registry
    return REGISTRY
