# SPDX-License-Identifier: MIT
"""Every metric fastmta exports, defined once (DESIGN.md §3.4).

Names and labels here are a public contract: the Grafana dashboard and the alert
rules in ``deploy/`` read them. No label takes an unbounded set of values (no
message ids, no addresses, no host names).
"""

from __future__ import annotations

import gzip
import os
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.exposition import choose_encoder

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_DELIVERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

smtp_connections_total = Counter(
    "fastmta_smtp_connections_total", "Inbound SMTP connections accepted", ["listener"]
)
smtp_connections_active = Gauge(
    "fastmta_smtp_connections_active", "Inbound SMTP connections open now", ["listener"]
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
queue_messages = Gauge("fastmta_queue_messages", "Messages in the queue by state", ["state"])
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
    "fastmta_destination_connections_active", "Outbound connections open now"
)


# --- the exporter ---------------------------------------------------------------


class Closer(Protocol):
    def close(self) -> None: ...


class _Handler(BaseHTTPRequestHandler):
    """GET /metrics (content-negotiated, optionally gzipped) and GET /healthz."""

    server: _ExporterServer
    protocol_version = "HTTP/1.1"
    server_version = "fastmta-metrics"

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
            registry = registry.restricted_registry(names)  # type: ignore[union-attr]
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
    address = None

    def close(self) -> None:
        pass


def default_registry() -> CollectorRegistry:
    """The registry to expose: this process's, or every worker's under PROMETHEUS_MULTIPROC_DIR."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
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
