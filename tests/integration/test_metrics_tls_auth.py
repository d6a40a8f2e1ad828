# SPDX-License-Identifier: MIT
"""TLS handshake and AUTH metrics count what a real client did to a real server."""

from __future__ import annotations

import smtplib
import socket
from collections.abc import Iterator

import pytest
from passlib.hash import sha512_crypt

from tests.fixtures.metrics import scrape, value
from tests.fixtures.server import RawClient, Running, running
from tests.support import wait_until

pytestmark = pytest.mark.timeout(60)

EXTRA = """
[[listener]]
name = "smtps"
address = "127.0.0.1:{port_smtps}"
tls = "implicit"

[tls]
cert_file = "{cert}"
key_file = "{key}"

[policy]
users_file = "USERS"
auth_failure_delay = "100ms"

[metrics]
address = "127.0.0.1:{port_metrics}"
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("metrics-tls")
    users = tmp / "users"
    users.write_text(f"alice:{sha512_crypt.using(rounds=5000).hash('wonderland')}\n")
    extra = EXTRA.replace("USERS", str(users))
    mx = 'mode = "submission"\ntls = "starttls"'
    with running(tmp, extra, ports=("metrics", "smtps"), tls=True, mx=mx) as s:
        yield s


def _metric(srv: Running, name: str, listener: str = "mx", **labels: str) -> float:
    return value(scrape(("127.0.0.1", srv.ports["metrics"])), name, listener=listener, **labels)


def test_tls_handshakes_ok_and_failed(srv: Running) -> None:
    ok0, failed0 = (
        _metric(srv, "fastmta_tls_handshakes_total", result="ok"),
        _metric(srv, "fastmta_tls_handshakes_total", result="failed"),
    )
    for _ in range(3):
        with smtplib.SMTP(srv.host, srv.port, timeout=30) as s:
            s.ehlo("client.test")
            s.starttls(context=srv.client_context())
            s.ehlo("client.test")
    with RawClient(srv.host, srv.port) as c:
        c.cmd(b"EHLO client.test")
        assert c.cmd(b"STARTTLS").startswith(b"220")
        c.send(b"this is not a TLS ClientHello\r\n" * 4)
        c.closed()
    wait_until(lambda: _metric(srv, "fastmta_tls_handshakes_total", result="failed") == failed0 + 1,
               what="one failed handshake counted")  # fmt: skip
    assert _metric(srv, "fastmta_tls_handshakes_total", result="ok") == ok0 + 3


def test_auth_attempts_ok_and_failed(srv: Running) -> None:
    ok0 = _metric(srv, "fastmta_auth_attempts_total", result="ok")
    failed0 = _metric(srv, "fastmta_auth_attempts_total", result="failed")
    rejected0 = _metric(srv, "fastmta_messages_rejected_total", reason="auth_failed")
    with smtplib.SMTP(srv.host, srv.port, timeout=30) as s:
        s.ehlo("client.test")
        s.starttls(context=srv.client_context())
        s.ehlo("client.test")
        s.user, s.password = "alice", "not-the-password"
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.auth("PLAIN", s.auth_plain)  # one attempt (login() would try LOGIN next)
        assert s.login("alice", "wonderland")[0] == 235
    assert _metric(srv, "fastmta_auth_attempts_total", result="failed") == failed0 + 1
    assert _metric(srv, "fastmta_auth_attempts_total", result="ok") == ok0 + 1
    # A failed login is also a rejection with its reason, on the same listener.
    assert _metric(srv, "fastmta_messages_rejected_total", reason="auth_failed") == rejected0 + 1


def test_implicit_tls_handshakes_counted_and_logged(srv: Running) -> None:
    """Implicit TLS counts and logs its handshakes like STARTTLS, with a reason even
    where the exception has no text (a FIN in the middle of the handshake)."""

    def handshakes(result: str) -> float:
        return _metric(srv, "fastmta_tls_handshakes_total", listener="smtps", result=result)

    ok0, failed0 = handshakes("ok"), handshakes("failed")
    for _ in range(2):
        with RawClient(srv.host, srv.ports["smtps"], tls=srv.client_context()) as c:
            assert c.banner.startswith(b"220 ")
    with RawClient(srv.host, srv.ports["smtps"], banner=False) as c:
        c.send(b"EHLO plain.test\r\n" * 4)  # not TLS at all
        assert c.closed()
    with RawClient(srv.host, srv.ports["smtps"], banner=False) as c:
        c.send(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, then FIN
        c.sock.shutdown(socket.SHUT_WR)
        assert c.closed()
    wait_until(lambda: handshakes("failed") == failed0 + 2, what="two failed implicit handshakes counted")
    assert handshakes("ok") == ok0 + 2
    failures = [x for x in srv.proc.stderr().splitlines() if "TLS handshake with 127.0.0.1 failed" in x]
    assert len(failures) >= 2, failures
    assert all(not x.endswith("failed: ") for x in failures), failures
