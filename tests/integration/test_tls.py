# SPDX-License-Identifier: MIT
"""STARTTLS and implicit TLS with certificates made in the test (trustme)."""

from __future__ import annotations

import re
import smtplib
import socket
import subprocess
from collections.abc import Iterator

import pytest

from tests.fixtures.server import RawClient, Running, queued_id, running
from tests.support import require_tool

pytestmark = pytest.mark.timeout(60)

TLS = """
[[listener]]
name = "smtps"
address = "127.0.0.1:{port_smtps}"
tls = "implicit"

[[listener]]
name = "v6"
address = "[::1]:{port_v6}"
tls = "starttls"

[tls]
cert_file = "{cert}"
key_file = "{key}"
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running(
        tmp_path_factory.mktemp("tls"), TLS, ports=("smtps", "v6"), tls=True, mx='tls = "starttls"'
    ) as s:
        yield s


def test_starttls_smtplib(srv: Running) -> None:
    with smtplib.SMTP(srv.host, srv.port, timeout=30) as s:
        s.ehlo("t.test")
        assert s.has_extn("starttls")
        code, _ = s.starttls(context=srv.client_context())
        assert code == 220
        s.ehlo("t.test")
        assert not s.has_extn("starttls")  # not offered again once TLS is up
        assert s.sendmail("a@x.test", ["b@y.test"], b"Subject: tls\r\n\r\nsecret\r\n") == {}
    lines = [x for x in srv.proc.log_lines() if '"b@y.test"' in x]
    assert lines


def test_received_header_names_tls(srv: Running) -> None:
    with RawClient(srv.host, srv.port) as raw:
        raw.cmd(b"EHLO t.test")
        assert raw.cmd(b"STARTTLS") == b"220 2.0.0 Ready to start TLS\r\n"
        tls = srv.client_context().wrap_socket(raw.sock, server_hostname="mx.fastmta.test")
        raw.sock, raw.buf = tls, b""
        raw.cmd(b"EHLO t.test")
        raw.cmd(b"MAIL FROM:<a@x.test>")
        raw.cmd(b"RCPT TO:<b@y.test>")
        raw.cmd(b"DATA")
        reply = raw.cmd(b"Subject: t\r\n\r\nbody\r\n.")
    msg_id = queued_id(reply)
    head = srv.body(msg_id).split(b"Subject:")[0].decode()
    assert "with ESMTPS id " + msg_id in head
    assert re.search(r"\(using TLSv1\.[23] with cipher [A-Z0-9_-]+\)", head), head


def test_starttls_injection_is_discarded(srv: Running) -> None:
    """CVE-2011-0411 class: commands pipelined after STARTTLS must not run inside TLS."""
    with RawClient(srv.host, srv.port) as raw:
        raw.cmd(b"EHLO t.test")
        raw.send(b"STARTTLS\r\nMAIL FROM:<injected@x.test>\r\nRCPT TO:<b@y.test>\r\n")
        assert raw.reply() == b"220 2.0.0 Ready to start TLS\r\n"
        tls = srv.client_context().wrap_socket(raw.sock, server_hostname="mx.fastmta.test")
        raw.sock, raw.buf = tls, b""
        raw.cmd(b"EHLO t.test")
        # had the injected MAIL run, this would be 503 nested MAIL
        assert raw.cmd(b"RCPT TO:<b@y.test>").startswith(b"503 5.5.1")
        assert raw.cmd(b"MAIL FROM:<a@x.test>").startswith(b"250")


def test_starttls_needs_ehlo_again(srv: Running) -> None:
    with RawClient(srv.host, srv.port) as raw:
        raw.cmd(b"EHLO t.test")
        raw.cmd(b"STARTTLS")
        raw.sock, raw.buf = srv.client_context().wrap_socket(raw.sock, server_hostname="mx.fastmta.test"), b""
        assert raw.cmd(b"MAIL FROM:<a@x.test>").startswith(b"503 5.5.1")
        assert raw.cmd(b"STARTTLS").startswith(b"503")  # already TLS


def test_bad_handshake_does_not_hurt_the_server(srv: Running) -> None:
    with RawClient(srv.host, srv.port) as raw:
        raw.cmd(b"EHLO t.test")
        raw.cmd(b"STARTTLS")
        raw.send(b"this is not a TLS client hello\r\n" * 10)
        assert raw.closed()
    with RawClient(srv.host, srv.port) as raw:
        assert raw.cmd(b"NOOP").startswith(b"250")


def test_implicit_tls(srv: Running) -> None:
    with smtplib.SMTP_SSL(srv.host, srv.ports["smtps"], context=srv.client_context(), timeout=30) as s:
        s.ehlo("t.test")
        assert not s.has_extn("starttls")
        assert s.sendmail("a@x.test", ["b@y.test"], b"Subject: smtps\r\n\r\nx\r\n") == {}


def test_ipv6_listener(srv: Running) -> None:
    with smtplib.SMTP("::1", srv.ports["v6"], timeout=30) as s:
        s.ehlo("t.test")
        s.starttls(context=srv.client_context())
        s.ehlo("t.test")
        s.mail("a@x.test")
        s.rcpt("b@y.test")
        _, reply = s.data(b"Subject: v6\r\n\r\nx\r\n")
    body = srv.body(queued_id(reply))
    assert body.startswith(b"Received: from t.test ([IPv6:::1])\r\n")


def test_swaks_tls(srv: Running) -> None:
    swaks = require_tool("swaks")
    out = subprocess.run([swaks, "--server", f"{srv.host}:{srv.port}", "--tls", "--from", "a@x.test",
                          "--to", "b@y.test", "--tls-verify", "--tls-ca-path", str(srv.ca_file)],
                         capture_output=True, timeout=30, text=True)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "250 2.0.0 Ok: queued as" in out.stdout


def test_plain_socket_to_implicit_listener(srv: Running) -> None:
    s = socket.create_connection((srv.host, srv.ports["smtps"]), timeout=5)
    s.sendall(b"EHLO plain\r\n")
    s.settimeout(5)
    try:
        data = s.recv(100)
    except (ConnectionResetError, TimeoutError):
        data = b""
    s.close()
    assert not data.startswith(b"250")
    with smtplib.SMTP_SSL(srv.host, srv.ports["smtps"], context=srv.client_context(), timeout=30) as c:
        assert c.noop()[0] == 250
