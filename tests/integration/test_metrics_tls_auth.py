# SPDX-License-Identifier: MIT
"""TLS handshake and AUTH metrics count what a real client did to a real server."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator

import pytest
from passlib.hash import sha512_crypt

from tests.fixtures.metrics import scrape, value
from tests.fixtures.server import RawClient, Running, running
from tests.support import wait_until

pytestmark = pytest.mark.timeout(60)

EXTRA = """
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
    with running(tmp, extra, ports=("metrics",), tls=True, mx='mode = "submission"\ntls = "starttls"') as s:
        yield s


def _metric(srv: Running, name: str, **labels: str) -> float:
    return value(scrape(("127.0.0.1", srv.ports["metrics"])), name, listener="mx", **labels)


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
