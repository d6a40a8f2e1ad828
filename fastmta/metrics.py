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

import gzip
import os
import socket
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

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
from prometheus_client.exposition import choose_encoder
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

# --- beyond the contract: what an operator needs (names are public once released) ---

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


class ListenerMetrics:
    """Every per-listener child a session touches, bound once per listener.

    ``rejected(reason)`` caches its child; reasons must come from a fixed set
    (the reply catalogue), never from peer input.
    """

    __slots__ = ("name", "connections", "active", "received", "received_bytes",
                 "tls_ok", "tls_failed", "auth_ok", "auth_failed", "_rejected")  # fmt: skip

    def __init__(self, listener: str) -> None:
        self.name = listener
        self.connections = bound(smtp_connections_total, listener)
        self.active = bound(smtp_connections_active, listener)
        self.received = bound(messages_received_total, listener)
        self.received_bytes = bound(received_bytes_total)
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
    """Spool size and LMDB map use, asked of the spool at each scrape (exporter thread)."""

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
        yield GaugeMetricFamily("fastmta_spool_size_bytes", "Bytes of the spool in use (LMDB pages)", used)
        yield GaugeMetricFamily("fastmta_spool_map_size_bytes", "Current LMDB map size", map_size)
        yield GaugeMetricFamily(
            "fastmta_spool_map_used_ratio", "Spool use over map size (the map grows by itself)",
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
    """Where scrapes read spool stats: ``source()`` returns ``used_bytes`` and ``map_size_bytes``.

    It runs on the exporter thread at each scrape, so it must be thread-safe and
    cheap (LMDB ``env.info()``/``env.stat()`` are); ``None`` removes the gauges.
    """
    _spool_stats.source = source


# --- the exporter ---------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """GET /metrics (content-negotiated, optionally gzipped) and GET /healthz."""

    server: _ExporterServer
    protocol_version = "HTTP/1.1"
    server_version = "fastmta-metrics"
    timeout = 30  # seconds per socket read: a stalled client cannot hold a thread for long

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        url = urlsplit(self.path)
        if url.path == "/metrics":
            self._metrics(parse_qs(url.query))
        elif url.path == "/healthz":
            ok = self.server.is_healthy()
            self._send(200 if ok else 503, b"ok\n" if ok else b"unavailable\n", "text/plain; charset=utf-8")
        elif url.path == "/":
            self._send(200, b'<a href="/metrics">/metrics</a> <a href="/healthz">/healthz</a>\n', "text/html")
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def _metrics(self, query: dict[str, list[str]]) -> None:
        registry = self.server.registry
        names = query.get("name[]")
        if names:
            registry = registry.restricted_registry(names)  # type: ignore[assignment]
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        try:
            body = encoder(registry)
        except Exception:  # a broken custom collector must not kill the scrape thread
            self._send(500, b"metrics collection failed\n", "text/plain; charset=utf-8")
            raise
        if "gzip" in self.headers.get("Accept-Encoding", ""):
            self._send(200, gzip.compress(body, compresslevel=1), content_type, gzipped=True)
        else:
            self._send(200, body, content_type)

    def _send(self, code: int, body: bytes, content_type: str, gzipped: bool = False) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if gzipped:
            self.send_header("Content-Encoding", "gzip")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        # stdout is the delivery log and stderr is for operators: scrapes are noise.
        pass


class _ExporterServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    registry: CollectorRegistry
    is_healthy: Callable[[], bool]

    def handle_error(self, request: object, client_address: object) -> None:
        # A scraper hanging up mid-response is routine; anything else goes to
        # stderr (never stdout: that is the delivery log).
        if not isinstance(sys.exc_info()[1], ConnectionError):
            traceback.print_exc(file=sys.stderr)


class _ExporterServer6(_ExporterServer):
    address_family = socket.AF_INET6


class Exporter:
    """A running exporter; ``address`` is where it actually listens (port 0 resolved)."""

    def __init__(self, server: _ExporterServer) -> None:
        self._server = server
        self.address: tuple[str, int] = server.server_address[:2]  # type: ignore[assignment]
        self._thread = threading.Thread(target=server.serve_forever, name="fastmta-metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class _Disabled:
    """What serve() returns when the exporter is off: nothing to close, no address."""

    address = None

    def close(self) -> None:
        pass


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


def serve(
    address: tuple[str, int] | None,
    healthy: Callable[[], bool],
    registry: CollectorRegistry | None = None,
) -> Exporter | _Disabled:
    """Start the /metrics + /healthz exporter in a daemon thread; ``None`` disables it.

    ``healthy()`` is called per /healthz request (from the exporter thread, so it
    must be cheap and thread-safe): 200 while it returns True, 503 otherwise.
    Binding errors (port in use) raise OSError here, at start-up, not later.
    """
    if address is None:
        return _Disabled()
    host, port = address
    server_cls = _ExporterServer6 if ":" in host else _ExporterServer
    server = server_cls((host.strip("[]"), port), _Handler)
    server.registry = registry if registry is not None else default_registry()
    server.is_healthy = healthy
    return Exporter(server)
