# SPDX-License-Identifier: MIT
"""Every way a connection ends gives its slots back: RST, FIN and timeout, at every stage.

A reset in the middle of a STARTTLS handshake once kept its per-IP and global slots
for good (the protocol never heard of the end), so a few hundred resets locked every
client out and every shutdown waited its full grace period. Each case below ends a
connection one way at one stage of a real session, then checks that no slot is
held (the ``fastmta_smtp_connections_active`` gauge) and that a client still gets
as many 220 banners as ``max_connections_per_ip`` allows.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from passlib.hash import sha512_crypt

from tests.fixtures.metrics import scrape, value
from tests.fixtures.server import RawClient, Running, serve_fastmta
from tests.support import wait_until

pytestmark = pytest.mark.timeout(120)

PER_IP = 2
EXTRA = f"""
[[listener]]
name = "smtps"
address = "127.0.0.1:{{port_smtps}}"
tls = "implicit"

[[listener]]
name = "proxied"
address = "127.0.0.1:{{port_proxied}}"
proxy_protocol = true

[tls]
cert_file = "{{cert}}"
key_file = "{{key}}"

[policy]
users_file = "USERS"
auth_failure_delay = "100ms"

[limits]
max_connections_per_ip = {PER_IP}
max_connections = 3
command_timeout = "1s"
data_timeout = "1s"

[metrics]
address = "127.0.0.1:{{port_metrics}}"
"""


def start_server(tmp: Path) -> Running:
    users = tmp / "users"
    tmp.mkdir(parents=True, exist_ok=True)
    users.write_text(f"alice:{sha512_crypt.using(rounds=5000).hash('wonderland')}\n")
    srv = serve_fastmta(tmp, EXTRA.replace("USERS", str(users)), ports=("smtps", "proxied", "metrics"),
                        tls=True, mx='tls = "starttls"')  # fmt: skip
    no_slot_held(srv)  # the harness's readiness probes hold slots for a moment
    return srv


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    s = start_server(tmp_path_factory.mktemp("slots"))
    try:
        yield s
    finally:
        s.proc.stop()


def client_hello(srv: Running) -> bytes:
    """The first flight of a real TLS client (a ClientHello), made without a socket."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = srv.client_context().wrap_bio(incoming, outgoing, server_hostname="mx.fastmta.test")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


# --- the stages: each returns a connection left in the middle of that stage ----------


def at_banner(srv: Running) -> RawClient:
    return RawClient(srv.host, srv.port)


def at_ehlo(srv: Running) -> RawClient:
    c = RawClient(srv.host, srv.port)
    assert c.cmd(b"EHLO slots.test").startswith(b"250")
    return c


def mid_starttls(srv: Running) -> RawClient:
    c = at_ehlo(srv)
    assert c.cmd(b"STARTTLS").startswith(b"220")
    hello = client_hello(srv)
    c.send(hello[: len(hello) // 2])
    return c


def mid_auth(srv: Running) -> RawClient:
    c = RawClient(srv.host, srv.ports["smtps"], tls=srv.client_context())
    assert c.cmd(b"EHLO slots.test").startswith(b"250")
    assert c.cmd(b"AUTH PLAIN") == b"334 \r\n"
    return c


def mid_data(srv: Running) -> RawClient:
    c = at_ehlo(srv)
    assert c.cmd(b"MAIL FROM:<a@x.test>").startswith(b"250")
    assert c.cmd(b"RCPT TO:<b@y.test>").startswith(b"250")
    assert c.cmd(b"DATA").startswith(b"354")
    c.send(b"Subject: cut\r\n\r\nhalf a li")
    return c


def mid_bdat(srv: Running) -> RawClient:
    c = at_ehlo(srv)
    assert c.cmd(b"MAIL FROM:<a@x.test>").startswith(b"250")
    assert c.cmd(b"RCPT TO:<b@y.test>").startswith(b"250")
    c.send(b"BDAT 100 LAST\r\n" + b"x" * 10)
    return c


def mid_proxy_header(srv: Running) -> RawClient:
    c = RawClient(srv.host, srv.ports["proxied"], banner=False)
    c.send(b"PROXY TCP4 192.0.2.")
    return c


def mid_implicit_handshake(srv: Running) -> RawClient:
    c = RawClient(srv.host, srv.ports["smtps"], banner=False)
    hello = client_hello(srv)
    c.send(hello[: len(hello) // 2])
    return c


STAGES: dict[str, Callable[[Running], RawClient]] = {
    "banner": at_banner,
    "ehlo": at_ehlo,
    "starttls": mid_starttls,
    "auth": mid_auth,
    "data": mid_data,
    "bdat": mid_bdat,
    "proxy": mid_proxy_header,
    "implicit": mid_implicit_handshake,
}


# --- the ends -------------------------------------------------------------------------


def reset(c: RawClient) -> None:
    """RST: SO_LINGER with a zero timeout makes close() abort the connection."""
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.sock.close()


def fin(c: RawClient) -> None:
    """FIN: the client says it is done sending; the server must close its side too."""
    c.sock.shutdown(socket.SHUT_WR)
    try:
        assert c.closed(15), "the server kept a half-closed connection"
    finally:
        c.close()


def silence(c: RawClient) -> None:
    """The client stops talking; command_timeout / data_timeout (1 s) must close the connection."""
    try:
        assert c.closed(15), "the server never timed the connection out"
    finally:
        c.close()


ENDS: dict[str, Callable[[RawClient], None]] = {"rst": reset, "fin": fin, "timeout": silence}


def active(srv: Running) -> float:
    return value(scrape(("127.0.0.1", srv.ports["metrics"])), "fastmta_smtp_connections_active")


def no_slot_held(srv: Running) -> None:
    # The client may see the end (a TLS close_notify, a FIN) a moment before the
    # server's loop gets to it: wait for the gauge, boundedly.
    wait_until(lambda: active(srv) == 0, timeout=10, what="every connection slot given back")


def assert_slots_free(srv: Running) -> None:
    no_slot_held(srv)
    clients = [RawClient(srv.host, srv.port) for _ in range(PER_IP)]
    try:
        assert all(c.banner.startswith(b"220 ") for c in clients), [c.banner for c in clients]
    finally:
        for c in clients:
            c.close()
    no_slot_held(srv)


@pytest.mark.parametrize("end", ENDS)
@pytest.mark.parametrize("stage", STAGES)
def test_slots_come_back(srv: Running, stage: str, end: str) -> None:
    assert_slots_free(srv)
    for _ in range(PER_IP + 1):  # more than one IP's share: a single leak shows
        ENDS[end](STAGES[stage](srv))
        no_slot_held(srv)
    assert_slots_free(srv)


def test_shutdown_does_not_wait_for_reset_handshakes(tmp_path: Path) -> None:
    srv = start_server(tmp_path)
    try:
        for stage in (mid_starttls, mid_implicit_handshake):
            reset(stage(srv))
            no_slot_held(srv)
        t0 = time.monotonic()
        assert srv.proc.stop() == 0
        elapsed = time.monotonic() - t0
    finally:
        srv.proc.stop()
    assert elapsed < 10, f"shutdown took {elapsed:.1f}s: it waited for connections that are gone"
