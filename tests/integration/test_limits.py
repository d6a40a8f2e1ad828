# SPDX-License-Identifier: MIT
"""Every [limits] key at and past its edge, against a real server with small limits."""

from __future__ import annotations

import json
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.metrics import scrape, value
from tests.fixtures.server import RawClient, Running, running
from tests.support import ROOT, wait_until

pytestmark = pytest.mark.timeout(60)

LIMITS = """
[limits]
max_message_size = 2000
max_recipients = 3
max_line_length = 100
max_errors = 3
max_connections_per_ip = 4
max_connections = 6
command_timeout = "1500ms"
data_timeout = "3s"

[metrics]
address = "127.0.0.1:{port_metrics}"
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running(tmp_path_factory.mktemp("limits"), LIMITS, ports=("metrics",)) as s:
        yield s


def wait_no_connections(srv: Running) -> None:
    """Until the server holds no connection slot: closes (ours and the harness's readiness
    probe, which the server may accept only after the probe returned) land asynchronously."""

    def idle() -> bool:
        text = scrape(("127.0.0.1", srv.ports["metrics"]))
        return (
            value(text, "fastmta_smtp_connections_total") >= 1
            and value(text, "fastmta_smtp_connections_active") == 0
        )

    wait_until(idle, what="every connection slot given back")


def start(c: RawClient, rcpts: int = 1) -> None:
    c.cmd(b"EHLO l.test")
    assert c.cmd(b"MAIL FROM:<a@x.test>").startswith(b"250")
    for i in range(rcpts):
        assert c.cmd(b"RCPT TO:<r%d@y.test>" % i).startswith(b"250")


def body_of(total: int) -> bytes:
    """A DATA body of exactly ``total`` octets (after unstuffing), ending in CRLF."""
    data = bytearray(b"x" * (total - 2))
    for i in range(98, total - 4, 100):
        data[i : i + 2] = b"\r\n"
    return bytes(data) + b"\r\n"


def test_ehlo_advertises_size(srv: Running) -> None:
    with smtplib.SMTP(srv.host, srv.port, timeout=30) as s:
        s.ehlo("l.test")
        assert s.esmtp_features["size"] == "2000"


@pytest.mark.parametrize(("size", "ok"), [(2000, True), (2001, False)])
def test_message_size_at_and_past(srv: Running, size: int, ok: bool) -> None:
    with RawClient(srv.host, srv.port) as c:
        start(c)
        assert c.cmd(b"DATA").startswith(b"354")
        c.send(body_of(size) + b".\r\n")
        reply = c.reply()
        assert (
            reply.startswith(b"250 2.0.0 Ok: queued")
            if ok
            else reply == b"552 5.3.4 Message size exceeds fixed limit\r\n"
        )
        assert c.cmd(b"NOOP").startswith(b"250")


@pytest.mark.parametrize(("size", "ok"), [(2000, True), (2001, False)])
def test_mail_size_param_at_and_past(srv: Running, size: int, ok: bool) -> None:
    with RawClient(srv.host, srv.port) as c:
        c.cmd(b"EHLO l.test")
        reply = c.cmd(b"MAIL FROM:<a@x.test> SIZE=%d" % size)
        assert reply.startswith(b"250") if ok else reply.startswith(b"552 5.3.4")


@pytest.mark.parametrize(("size", "ok"), [(2000, True), (2001, False)])
def test_bdat_size_at_and_past(srv: Running, size: int, ok: bool) -> None:
    with RawClient(srv.host, srv.port) as c:
        start(c)
        c.send(b"BDAT 1000\r\n" + b"b" * 1000)
        assert c.reply().startswith(b"250 2.0.0 1000 octets")
        rest = size - 1000
        c.send(b"BDAT %d LAST\r\n" % rest + b"c" * rest)
        reply = c.reply()
        assert reply.startswith(b"250 2.0.0 Ok: queued") if ok else reply.startswith(b"552 5.3.4")
        assert c.cmd(b"NOOP").startswith(b"250")


def test_recipients_at_and_past(srv: Running) -> None:
    with RawClient(srv.host, srv.port) as c:
        start(c, rcpts=3)
        assert c.cmd(b"RCPT TO:<r4@y.test>") == b"452 4.5.3 Too many recipients\r\n"
        assert c.cmd(b"DATA").startswith(b"354")
        c.send(b"Subject: three\r\n\r\n.\r\n")
        assert c.reply().startswith(b"250 2.0.0 Ok: queued")


def test_line_length_at_and_past(srv: Running) -> None:
    with RawClient(srv.host, srv.port) as c:
        c.cmd(b"EHLO l.test")
        at = b"NOOP " + b"a" * (100 - 7)  # 100 octets with the CRLF
        assert c.cmd(at) == b"250 2.0.0 Ok\r\n"
        assert c.cmd(at + b"a") == b"500 5.5.2 Line too long\r\n"
        assert c.cmd(b"NOOP" + b" " * 100_000) == b"500 5.5.2 Line too long\r\n"
        assert c.cmd(b"NOOP") == b"250 2.0.0 Ok\r\n"


def test_max_errors_then_421(srv: Running) -> None:
    with RawClient(srv.host, srv.port) as c:
        for _ in range(3):  # max_errors = 3 bad commands are answered...
            assert c.cmd(b"BOGUS").startswith(b"500 5.5.1")
        assert c.cmd(b"BOGUS") == b"421 4.7.0 Too many errors, closing connection\r\n"  # ...the 4th closes
        assert c.closed()


def test_connections_per_ip_at_and_past(srv: Running) -> None:
    wait_no_connections(srv)
    clients = [RawClient(srv.host, srv.port) for _ in range(4)]
    try:
        assert all(c.banner.startswith(b"220 ") for c in clients)
        with RawClient.__new__(RawClient) as extra:
            extra.sock = socket.create_connection((srv.host, srv.port), timeout=30)
            extra.buf = b""
            assert extra.reply() == b"421 4.7.0 Too many connections from your address\r\n"
            assert extra.closed()
    finally:
        for c in clients:
            c.close()
    wait_no_connections(srv)
    with RawClient(srv.host, srv.port) as c:  # slots are given back
        assert c.banner.startswith(b"220 ")


def test_max_connections_global(srv: Running) -> None:
    # per-IP limit is 4 and the global one 6: use two loopback addresses
    wait_no_connections(srv)
    clients = [RawClient(srv.host, srv.port) for _ in range(4)]
    try:
        for _ in range(2):
            clients.append(RawClient(srv.host, srv.port, source="127.0.0.2"))
            assert clients[-1].banner.startswith(b"220 ")
        with RawClient(srv.host, srv.port, source="127.0.0.3") as c:
            assert c.banner.startswith(b"421 4.3.2")
    finally:
        for c in clients:
            c.close()
    wait_no_connections(srv)  # the next test must not meet these slots still held


# The timeouts run on a coarse clock (a sweep every tenth of the shortest timeout), so a
# session may be cut up to a tick (plus any loop delay) early: the bounds leave room.
def test_command_timeout(srv: Running) -> None:
    with RawClient(srv.host, srv.port) as c:
        c.cmd(b"EHLO l.test")
        t0 = time.monotonic()
        assert c.reply() == b"421 4.4.2 Timeout exceeded, closing connection\r\n"
        assert 1.0 <= time.monotonic() - t0 < 15.0  # the 1.5 s limit, not the 300 s default
        assert c.closed()


def test_command_timeout_is_per_command(srv: Running) -> None:
    with RawClient(srv.host, srv.port) as c:
        for _ in range(6):  # 2.4 s of activity, never more than 0.4 s of the 1.5 s limit idle
            time.sleep(0.4)
            assert c.cmd(b"NOOP").startswith(b"250")


def test_data_timeout(srv: Running) -> None:
    before = len(srv.bodies())
    with RawClient(srv.host, srv.port) as c:
        start(c)
        assert c.cmd(b"DATA").startswith(b"354")
        c.send(b"Subject: slow\r\n")
        time.sleep(1.8)  # past command_timeout (1.5 s), well within data_timeout (3 s)
        c.send(b"\r\nstill here\r\n")
        t0 = time.monotonic()
        assert c.reply().startswith(b"421 4.4.2")
        assert time.monotonic() - t0 >= 1.5
    assert len(srv.bodies()) == before  # the cut message was not queued


def test_spool_full_is_452(tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp = tmp_path_factory.mktemp("full")
    extra = f'[spool]\npath = "{tmp / "spool"}"\nmap_size = "2MiB"\nmax_map_size = "2MiB"\n'
    with running(tmp, extra) as srv, RawClient(srv.host, srv.port) as c:
        c.cmd(b"EHLO f.test")
        body = (b"z" * 998 + b"\r\n") * 200  # 200 KB
        replies = []
        for _ in range(30):
            c.cmd(b"MAIL FROM:<a@x.test>")
            c.cmd(b"RCPT TO:<b@y.test>")
            reply = c.cmd(b"DATA")
            if reply.startswith(b"354"):
                c.send(body)
                reply = c.cmd(b".")
            replies.append(reply)
            if reply.startswith(b"452"):
                break
            c.cmd(b"RSET")
        assert replies[0].startswith(b"250 2.0.0 Ok: queued")
        assert replies[-1] == b"452 4.3.1 Insufficient system storage, try again later\r\n"
        assert c.cmd(b"RSET").startswith(b"250") and c.cmd(b"NOOP").startswith(b"250")  # session goes on


def test_memory_bounded_when_the_client_never_reads(srv: Running) -> None:
    """A client that floods commands and never reads replies: the server stops reading, RSS stays flat."""

    def rss_kib() -> int:
        for line in Path(f"/proc/{srv.proc.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    before = rss_kib()
    s = socket.create_connection((srv.host, srv.port), timeout=30)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setblocking(False)
    sent, chunk = 0, b"NOOP\r\n" * 10_000
    deadline = time.monotonic() + 3
    progress = time.monotonic()
    while sent < 50 * 1024**2 and time.monotonic() < deadline and time.monotonic() - progress < 0.5:
        try:
            sent += s.send(chunk)
            progress = time.monotonic()
        except BlockingIOError:
            time.sleep(0.01)
    grown = rss_kib() - before
    s.close()
    assert sent < 50 * 1024**2  # the server stopped taking bytes: TCP back-pressure reached the client
    assert grown < 20 * 1024, f"server RSS grew {grown} KiB"
    with RawClient(srv.host, srv.port) as c:
        assert c.cmd(b"NOOP").startswith(b"250")


def test_command_line_is_timed_from_its_first_byte(srv: Running) -> None:
    """Slowloris: a byte every 0.5 s never leaves the line idle for command_timeout (1.5 s),
    but the line must still be complete 1.5 s after its first byte."""
    with RawClient(srv.host, srv.port) as c:
        t0 = time.monotonic()
        reply = b""
        for byte in b"NOOP" + b" " * 40:
            try:
                c.send(bytes([byte]))
            except OSError:
                break
            c.sock.settimeout(0.5)
            try:
                reply += c.sock.recv(1000)
            except TimeoutError:
                continue
            if reply.endswith(b"\r\n"):
                break
        held = time.monotonic() - t0
        assert reply == b"421 4.4.2 Timeout exceeded, closing connection\r\n"
        assert held < 6, f"the drip held the slot {held:.1f}s"
        assert c.closed()


def test_over_long_line_is_answered_before_its_crlf(srv: Running) -> None:
    metrics = ("127.0.0.1", srv.ports["metrics"])
    before = value(scrape(metrics), "fastmta_messages_rejected_total", reason="line_too_long")
    with RawClient(srv.host, srv.port) as c:
        c.send(b"NOOP " + b"a" * 93 + b"\r")  # 99 octets: an LF would make it 100, the limit
        c.sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            c.sock.recv(100)
        c.sock.settimeout(30)
        c.send(b"a")  # 100 octets without a CRLF: past the limit, whatever comes next
        assert c.reply() == b"500 5.5.2 Line too long\r\n"
        c.send(b"RSET\r\n")  # still the over-long line: never read as a command
        assert c.cmd(b"NOOP") == b"250 2.0.0 Ok\r\n"
    after = value(scrape(metrics), "fastmta_messages_rejected_total", reason="line_too_long")
    assert after == before + 1


def test_over_long_lines_count_towards_max_errors(srv: Running) -> None:
    with RawClient(srv.host, srv.port) as c:
        for _ in range(3):  # max_errors = 3, each answered at once
            c.send(b"x" * 200)
            assert c.reply() == b"500 5.5.2 Line too long\r\n"
            c.send(b"\r\n")
        c.send(b"x" * 200)
        assert c.reply() == b"421 4.7.0 Too many errors, closing connection\r\n"
        assert c.closed()


@pytest.fixture(scope="module")
def short_sessions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    extra = '[limits]\nmax_session_time = "2s"\ncommand_timeout = "30s"\ndata_timeout = "30s"\n'
    with running(tmp_path_factory.mktemp("session-time"), extra) as s:
        yield s


def test_session_within_max_session_time(short_sessions: Running) -> None:
    with RawClient(short_sessions.host, short_sessions.port) as c:
        for _ in range(3):  # about 0.6 s of a 2 s bound
            time.sleep(0.2)
            assert c.cmd(b"NOOP").startswith(b"250")
        assert c.cmd(b"QUIT").startswith(b"221")


def test_busy_session_past_max_session_time(short_sessions: Running) -> None:
    """Never idle, yet cut: at a command boundary after max_session_time."""
    with RawClient(short_sessions.host, short_sessions.port) as c:
        t0 = time.monotonic()
        while True:
            time.sleep(0.2)
            reply = c.cmd(b"NOOP")
            if not reply.startswith(b"250"):
                break
            assert time.monotonic() - t0 < 15, "the session was never cut"
        assert reply == b"421 4.4.2 Timeout exceeded, closing connection\r\n"
        assert time.monotonic() - t0 >= 1.5
        assert c.closed()


def test_session_stuck_in_data_past_max_session_time(short_sessions: Running) -> None:
    """A body dripped slowly (never idle past data_timeout) is cut by the session bound."""
    before = len(short_sessions.bodies())
    with RawClient(short_sessions.host, short_sessions.port) as c:
        start(c)
        assert c.cmd(b"DATA").startswith(b"354")
        t0 = time.monotonic()
        c.sock.settimeout(0.3)
        got = b""
        while not got.endswith(b"\r\n") and time.monotonic() - t0 < 15:
            try:
                c.send(b"x")
                got += c.sock.recv(1000)
            except TimeoutError:
                continue
            except OSError:
                break
        assert got == b"421 4.4.2 Timeout exceeded, closing connection\r\n"
    assert len(short_sessions.bodies()) == before  # the cut message was not queued


def test_slowloris_fault_scenario(srv: Running) -> None:
    """bench/faults/slowloris.py against command_timeout = 1.5 s: every dripping connection
    is told 421 and closed near the limit, none lasts until the scenario's own bound."""
    wait_no_connections(srv)
    out = subprocess.run(
        [sys.executable, "-m", "bench.faults.slowloris", "--port", str(srv.port), "--connections", "3",
         "--interval", "0.3", "--max-time", "20"],
        capture_output=True, timeout=60, cwd=ROOT, check=True,
    )  # fmt: skip
    report = json.loads(out.stdout)
    assert report["closed_by_server"] == 3 and report["still_open_at_max_time"] == 0, report
    assert report["held_s"]["max"] < 8, report
    for conn in report["per_connection"]:
        assert conn["replies"][-1] == "421 4.4.2 Timeout exceeded, closing connection", conn
    wait_no_connections(srv)
