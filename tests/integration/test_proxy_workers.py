# SPDX-License-Identifier: MIT
"""Behind a real HAProxy: PROXY v1 and v2 into ``workers = 2``.

HAProxy (``mode tcp``, ``send-proxy`` / ``send-proxy-v2``) forwards smtplib
connections made from 127.0.0.7 and 127.0.0.8; fastmta's socket peer is HAProxy
(127.0.0.1), yet policy, the delivery log and ``Received:`` name the real client.
Hand-made headers over raw sockets reach both workers, and a connection without
a header is dropped by whichever worker takes it.
"""

from __future__ import annotations

import json
import smtplib
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fastmta.smtp import proxy
from tests.fixtures.workers import Supervised
from tests.support import free_port, require_tool, run_fastmta, wait_port, wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def behind_haproxy(
    workers_server: Callable[..., Supervised], tmp_path: Path
) -> Iterator[tuple[Supervised, int, int]]:
    """(fastmta with 2 workers and PROXY on, HAProxy port sending v1, HAProxy port sending v2)."""
    haproxy = require_tool("haproxy")
    port = free_port()
    srv = workers_server(hold=True, port=port, listener_extra="proxy_protocol = true\n")
    v1, v2 = free_port(), free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        "global\n  maxconn 200\n"
        "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n"
        f"frontend f1\n  bind 127.0.0.1:{v1}\n  default_backend b1\n"
        f"backend b1\n  server s1 127.0.0.1:{port} send-proxy\n"
        f"frontend f2\n  bind 127.0.0.1:{v2}\n  default_backend b2\n"
        f"backend b2\n  server s2 127.0.0.1:{port} send-proxy-v2\n"
    )
    proc = subprocess.Popen(
        [haproxy, "-f", str(cfg), "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_port("127.0.0.1", v2, proc=proc)  # type: ignore[arg-type]
        yield srv, v1, v2
    finally:
        proc.terminate()
        proc.wait(10)


def _send(port: int, source: str, n: int) -> None:
    for i in range(n):
        with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(source, 0)) as c:
            c.sendmail("a@src.test", ["b@far.test"], f"Subject: via {source} {i}\r\n\r\nhi\r\n".encode())


def test_haproxy_v1_and_v2_real_client_in_log_and_received(
    behind_haproxy: tuple[Supervised, int, int],
) -> None:
    srv, v1, v2 = behind_haproxy
    _send(v1, "127.0.0.7", 12)
    _send(v2, "127.0.0.8", 12)
    listed = run_fastmta("queue", "list", "--json", "--config", str(srv.config))
    rows = [json.loads(x) for x in listed.stdout.splitlines()]
    assert len(rows) == 24
    seen = set()
    for row in rows[:3] + rows[-3:]:
        shown = run_fastmta("queue", "show", row["id"], "--json", "--config", str(srv.config))
        doc = json.loads(shown.stdout)
        assert doc["client_ip"] in ("127.0.0.7", "127.0.0.8")
        assert f"[{doc['client_ip']}]" in doc["headers"].split("\r\n\r\n")[0]
        seen.add(doc["client_ip"])
    assert seen == {"127.0.0.7", "127.0.0.8"}

    def logged() -> list[dict[str, str]]:
        return [json.loads(x) for x in srv.server.log_lines() if x.startswith("{")]

    wait_until(lambda: len(logged()) >= 24, what="24 log lines")
    assert sorted({r["client_ip"] for r in logged()}) == ["127.0.0.7", "127.0.0.8"]
    # A scrape waits only 0.5 s for each worker's values: a loaded worker's may come a scrape later.
    wait_until(lambda: srv.metric("fastmta_messages_received_total") == 24, what="24 received counted")


def _relay_attempt(port: int, header: bytes) -> bytes:
    """Send a PROXY header, then try to relay; the RCPT reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(header)
        f = s.makefile("rb")
        assert f.readline().startswith(b"220 ")
        s.sendall(b"HELO p.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@far.test>\r\nQUIT\r\n")
        f.readline(), f.readline()
        return f.readline()


def test_hand_made_headers_drive_policy_in_every_worker(workers_server: Callable[..., Supervised]) -> None:
    """The socket peer (127.0.0.1) may relay, the addresses in the headers may not: every
    connection, whichever worker took it, is judged by its header."""
    srv = workers_server(hold=True, listener_extra="proxy_protocol = true\n",
                         extra='\n[limits]\ncommand_timeout = "2s"\n')  # fmt: skip
    for i in range(16):  # connections land on both workers (SO_REUSEPORT hash of the port pair)
        make = proxy.v1_header if i % 2 else proxy.v2_header
        assert _relay_attempt(srv.port, make(f"192.0.2.{i + 1}", "127.0.0.1", 40000 + i, 25)).startswith(
            b"554 5.7.1"
        )
    assert _relay_attempt(srv.port, proxy.v1_header("127.0.0.9", "127.0.0.1", 40000, 25)).startswith(b"250 ")
    # no header at all: the worker waits for it, then drops the connection without a banner
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
        s.sendall(b"EHLO not-a-proxy.test\r\n")
        assert s.recv(512) == b""
    assert "bad PROXY header" in srv.server.stderr()
