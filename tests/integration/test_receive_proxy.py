# SPDX-License-Identifier: MIT
"""PROXY protocol v1/v2: the real client address drives policy, limits and Received:."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from fastmta.smtp import proxy
from tests.fixtures.server import RawClient, Running, queued_id, running
from tests.support import wait_until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    extra = '[limits]\nmax_connections_per_ip = 2\ncommand_timeout = "1s"\n'
    with running(tmp_path_factory.mktemp("proxy"), extra, mx="proxy_protocol = true") as s:
        yield s


def connect(srv: Running, header: bytes, split: bool = False) -> RawClient:
    c = RawClient.__new__(RawClient)
    c.sock = socket.create_connection((srv.host, srv.port), timeout=30)
    c.buf = b""
    if split:
        for i in range(0, len(header), 5):
            c.sock.sendall(header[i : i + 5])
            time.sleep(0.01)
    else:
        c.sock.sendall(header)
    c.banner = c.reply()
    return c


def test_v1_client_address_is_used(srv: Running) -> None:
    with connect(srv, proxy.v1_header("192.0.2.10", "127.0.0.1", 40000, 25)) as c:
        assert c.banner.startswith(b"220 ")
        c.cmd(b"EHLO p.test")
        c.cmd(b"MAIL FROM:<a@x.test>")
        assert c.cmd(b"RCPT TO:<b@far.test>").startswith(b"554 5.7.1")  # 192.0.2.10 may not relay


def test_v2_ipv6_and_received_header(srv: Running) -> None:
    hdr = proxy.v2_header("2001:db8::7", "::1", 40000, 25, tlvs=b"\x04\x00\x01x")
    with connect(srv, hdr, split=True) as c:
        c.cmd(b"EHLO p.test")
        c.cmd(b"MAIL FROM:<a@x.test>")
        assert c.cmd(b"RCPT TO:<b@far.test>").startswith(b"554 5.7.1")


def test_v2_local_and_v1_unknown_keep_the_socket_peer(srv: Running) -> None:
    local = proxy.V2_SIGNATURE + bytes([0x20, 0x00, 0x00, 0x00])
    for hdr in (local, b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"):
        with connect(srv, hdr) as c:
            c.cmd(b"EHLO p.test")
            reply = c.message(b"a@x.test", b"b@far.test", b"Subject: p\r\n\r\nx\r\n")  # 127.0.0.1 may relay
            assert reply.startswith(b"250 2.0.0 Ok: queued as ")
            assert b"([127.0.0.1])" in srv.body(queued_id(reply))


def test_received_and_log_name_the_real_client(srv: Running) -> None:
    # relay_networks default is loopback, so use a proxied loopback address that is not 127.0.0.1
    with connect(srv, proxy.v1_header("127.0.0.42", "127.0.0.1", 40000, 25) + b"EHLO p.test\r\n") as c:
        assert c.reply().startswith(b"250")
        reply = c.message(b"a@x.test", b"b@far.test", b"Subject: p\r\n\r\nx\r\n")
    msg_id = queued_id(reply)
    assert b"Received: from p.test ([127.0.0.42])" in srv.body(msg_id)

    def recs() -> list[dict[str, object]]:
        return [json.loads(x) for x in srv.proc.log_lines() if msg_id in x]

    wait_until(lambda: bool(recs()), what=f"the log line of {msg_id}")
    assert recs()[0]["client_ip"] == "127.0.0.42"


def test_limits_count_the_real_client(srv: Running) -> None:
    hdr = proxy.v1_header("192.0.2.20", "127.0.0.1", 40000, 25)
    a, b = connect(srv, hdr), connect(srv, hdr)
    try:
        third = connect(srv, hdr)
        assert third.banner.startswith(b"421 4.7.0")
        third.close()
        with connect(srv, proxy.v1_header("192.0.2.21", "127.0.0.1", 40000, 25)) as other:
            assert other.banner.startswith(b"220 ")
    finally:
        a.close()
        b.close()


JUNK = [
    b"EHLO not.a.proxy\r\n",
    b"PROXY TCP4 1.2.3.4\r\n",
    b"PROXY TCP9 a b 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
    b"X" * 200,
    proxy.V2_SIGNATURE + b"\x11\x11\x00\x0c" + b"\x00" * 12,
]


@pytest.mark.parametrize("junk", JUNK)
def test_bad_headers_close_without_reply(srv: Running, junk: bytes) -> None:
    s = socket.create_connection((srv.host, srv.port), timeout=30)
    s.sendall(junk)
    assert s.recv(100) == b""
    s.close()


def test_missing_header_times_out(srv: Running) -> None:
    s = socket.create_connection((srv.host, srv.port), timeout=30)
    t0 = time.monotonic()
    assert s.recv(100) == b""
    # command_timeout (1 s) on the server's coarse clock (a tick of 0.1 s, later when loaded):
    # it may cut a little early, never at once, and long before the 300 s default.
    assert 0.5 <= time.monotonic() - t0 < 15
    s.close()


@pytest.mark.parametrize(
    ("buf", "expect"),
    [
        (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\nEHLO", (36, "192.0.2.1")),
        (b"PROXY TCP6 2001:db8::1 2001:db8::2 65535 25\r\n", (45, "2001:db8::1")),
        (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2", None),
        (b"PRO", None),
        (b"\r\n\r\n\x00\r\n", None),
        (proxy.v2_header("192.0.2.9", "192.0.2.8", 1, 2)[:20], None),
        (proxy.v2_header("192.0.2.9", "192.0.2.8", 1, 2) + b"EHLO", (28, "192.0.2.9")),
    ],
)
def test_parse(buf: bytes, expect: tuple[int, str] | None) -> None:
    assert proxy.parse(buf) == expect


BAD = [
    b"PROXY TCP4 192.0.2.1 192.0.2.2 01 2\r\n",
    b"PROXY TCP4 192.0.2.1 192.0.2.2 1 70000\r\n",
    b"GET / HTTP/1.0\r\n",
    b"PROXY " + b"1" * 120,
    proxy.V2_SIGNATURE + b"\x31\x11\x00\x00",
    proxy.V2_SIGNATURE + b"\x22\x11\x00\x00",
]


@pytest.mark.parametrize("bad", BAD)
def test_parse_errors(bad: bytes) -> None:
    with pytest.raises(proxy.ProxyError):
        proxy.parse(bad)
