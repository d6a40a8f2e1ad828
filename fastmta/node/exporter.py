# SPDX-License-Identifier: MIT
"""The HTTP exporter of a node: ``/metrics`` for Prometheus and ``/healthz`` for load balancers.

It runs in a daemon thread (http.server), never on the event loop, so a slow
scrape cannot stall mail. The metric objects themselves live in ``fastmta.metrics``.
"""

from __future__ import annotations

import gzip
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from fastmta.metrics import default_registry


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
    """What serve_metrics() returns when the exporter is off: nothing to close, no address."""

    address = None

    def close(self) -> None:
        pass


def serve_metrics(
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
