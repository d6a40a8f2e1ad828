# SPDX-License-Identifier: MIT
"""AUTH PLAIN/LOGIN on a submission listener (only over TLS), wrong passwords, the per-IP limit."""

from __future__ import annotations

import base64
import contextlib
import email
import email.utils
import smtplib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from passlib.hash import sha256_crypt, sha512_crypt

from tests.fixtures.server import RawClient, Running, queued_id, running
from tests.support import require_tool

pytestmark = pytest.mark.timeout(60)

EXTRA = """
[[listener]]
name = "relay"
address = "127.0.0.1:{port_relay}"
tls = "starttls"

[tls]
cert_file = "{cert}"
key_file = "{key}"

[policy]
relay_networks = []
local_domains = ["local.test"]
users_file = "USERS"
auth_failure_delay = "300ms"
max_auth_failures_per_ip = 3
"""
LONG_PW = "correct horse battery staple " * 24  # 696 octets: its AUTH PLAIN line is over 512


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("auth")
    users = tmp / "users"
    users.write_text(
        f"alice:{sha512_crypt.using(rounds=5000).hash('wonderland')}\n"
        f"bob:{sha256_crypt.using(rounds=5000).hash('builder')}\n"
        f"carol:{sha512_crypt.using(rounds=5000).hash(LONG_PW)}\n"
    )  # passlib defaults to 656000 rounds
    extra = EXTRA.replace("USERS", str(users))
    with running(tmp, extra, ports=("relay",), tls=True, mx='mode = "submission"\ntls = "starttls"') as s:
        yield s


@contextlib.contextmanager
def secured(srv: Running, source: str | None = None) -> Iterator[RawClient]:
    """A raw client past EHLO, STARTTLS and the EHLO again inside TLS."""
    with RawClient(srv.host, srv.port, source=source) as c:
        c.cmd(b"EHLO a.test")
        c.starttls(srv.client_context())
        c.cmd(b"EHLO a.test")
        yield c


def plain(user: str, pw: str) -> bytes:
    return base64.b64encode(f"\0{user}\0{pw}".encode())


def test_no_auth_without_tls(srv: Running) -> None:
    with RawClient(srv.host, srv.port) as c:
        ehlo = c.cmd(b"EHLO a.test")
        assert b"AUTH" not in ehlo and b"STARTTLS" in ehlo
        assert c.cmd(b"MAIL FROM:<a@x.test>") == b"530 5.7.0 Authentication required\r\n"
        assert c.cmd(b"AUTH PLAIN " + plain("alice", "wonderland")).startswith(b"538 5.7.11")


def test_smtplib_login_and_relay(srv: Running) -> None:
    with smtplib.SMTP(srv.host, srv.port, timeout=30) as s:
        s.ehlo("a.test")
        s.starttls(context=srv.client_context())
        s.ehlo("a.test")
        assert set(s.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}
        assert s.login("alice", "wonderland")[0] == 235
        assert s.sendmail("alice@x.test", ["someone@elsewhere.test"], b"Subject: sub\r\n\r\nx\r\n") == {}


def submit(srv: Running, port: int, message: bytes) -> str:
    """One message from alice over STARTTLS + AUTH with smtplib; its queue id."""
    with smtplib.SMTP(srv.host, port, timeout=30) as s:
        s.starttls(context=srv.client_context())
        s.login("alice", "wonderland")
        assert s.mail("alice@x.test")[0] == 250 and s.rcpt("r@far.test")[0] == 250
        code, reply = s.data(message)
    assert code == 250, reply
    return queued_id(reply)


def test_submission_adds_a_missing_date_and_message_id(srv: Running) -> None:
    """As Postfix does for its own clients: the submission listener adds Date: and Message-ID:
    when the message lacks them and leaves present ones alone; the relay listener adds none."""
    bare = submit(srv, srv.port, b"Subject: bare\r\n\r\nx\r\n")
    msg = email.message_from_bytes(srv.body(bare))
    assert msg["Message-ID"] == f"<{bare}@mx.fastmta.test>"
    assert email.utils.parsedate_to_datetime(msg["Date"]).tzinfo is not None
    dated = submit(srv, srv.port, b"Subject: dated\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nx\r\n")
    msg = email.message_from_bytes(srv.body(dated))
    assert msg.get_all("Date") == ["Mon, 1 Jan 2024 00:00:00 +0000"]
    assert msg.get_all("Message-ID") == [f"<{dated}@mx.fastmta.test>"]
    relayed = submit(srv, srv.ports["relay"], b"Subject: relayed\r\n\r\nx\r\n")
    msg = email.message_from_bytes(srv.body(relayed))
    assert msg["Date"] is None and msg["Message-ID"] is None


def test_auth_login_and_received_says_esmtpsa(srv: Running) -> None:
    with RawClient(srv.host, srv.port) as c:
        c.cmd(b"EHLO a.test")
        c.starttls(srv.client_context())
        assert b"AUTH PLAIN LOGIN" in c.cmd(b"EHLO a.test")
        assert c.cmd(b"AUTH LOGIN") == b"334 VXNlcm5hbWU6\r\n"
        assert c.cmd(base64.b64encode(b"bob")) == b"334 UGFzc3dvcmQ6\r\n"
        assert c.cmd(base64.b64encode(b"builder")) == b"235 2.7.0 Authentication successful\r\n"
        assert c.cmd(b"AUTH PLAIN " + plain("bob", "builder")).startswith(b"503 5.5.1")
        assert b"AUTH" not in c.cmd(b"EHLO a.test")
        reply = c.message(b"bob@x.test", b"r@far.test", b"Subject: a\r\n\r\nb\r\n")
    msg_id = queued_id(reply)
    assert b" with ESMTPSA id " in srv.body(msg_id)


def test_long_plain_responses_with_max_line_512(srv: Running) -> None:
    """RFC 4954 §4: AUTH lines may be up to 12,288 octets; max_line_length (512) holds elsewhere."""
    line = b"AUTH PLAIN " + plain("carol", LONG_PW)
    assert 512 < len(line) + 2 < 12_288
    with RawClient(srv.host, srv.port) as c:
        c.cmd(b"EHLO a.test")
        assert c.cmd(line) == b"500 5.5.2 Line too long\r\n"  # AUTH is not offered before TLS
        c.starttls(srv.client_context())
        c.cmd(b"EHLO a.test")
        assert c.cmd(b"NOOP " + b"x" * 600) == b"500 5.5.2 Line too long\r\n"
        assert c.cmd(line).startswith(b"235 2.7.0")  # the initial response
        assert c.cmd(b"MAIL FROM:<carol@local.test>").startswith(b"250")
    with secured(srv) as c:
        assert c.cmd(b"AUTH PLAIN") == b"334 \r\n"
        assert c.cmd(plain("carol", LONG_PW)).startswith(b"235 2.7.0")  # a continuation line


def test_plain_with_continuation_and_cancel(srv: Running) -> None:
    with secured(srv) as c:
        assert c.cmd(b"AUTH PLAIN") == b"334 \r\n"
        assert c.cmd(b"*") == b"501 5.0.0 Authentication cancelled\r\n"
        assert c.cmd(b"AUTH PLAIN") == b"334 \r\n"
        assert c.cmd(b"!!notbase64").startswith(b"501 5.5.2")
        assert c.cmd(b"AUTH CRAM-MD5").startswith(b"504 5.5.4")
        assert c.cmd(b"AUTH PLAIN") == b"334 \r\n"
        assert c.cmd(plain("alice", "wonderland")).startswith(b"235 2.7.0")


def test_wrong_password_is_delayed_535(srv: Running) -> None:
    with secured(srv, source="127.0.0.7") as c:
        t0 = time.monotonic()
        assert (
            c.cmd(b"AUTH PLAIN " + plain("alice", "wrong"))
            == b"535 5.7.8 Authentication credentials invalid\r\n"
        )
        assert time.monotonic() - t0 >= 0.3
        assert c.cmd(b"AUTH PLAIN " + plain("nobody", "x")).startswith(b"535 5.7.8")
        assert c.cmd(b"MAIL FROM:<a@x.test>").startswith(b"530 5.7.0")


def test_failure_limit_per_ip(srv: Running) -> None:
    source = "127.0.0.9"
    with secured(srv, source=source) as c:
        for _ in range(2):
            assert c.cmd(b"AUTH PLAIN " + plain("alice", "bad")).startswith(b"535 5.7.8")
        assert (
            c.cmd(b"AUTH PLAIN " + plain("alice", "bad")) == b"421 4.7.0 Too many authentication failures\r\n"
        )
        assert c.closed()
    with secured(srv, source=source) as c:  # even the right password, from that IP
        assert c.cmd(b"AUTH PLAIN " + plain("alice", "wonderland")).startswith(b"421 4.7.0")
    with secured(srv, source="127.0.0.10") as c:  # other IPs are not affected
        assert c.cmd(b"AUTH PLAIN " + plain("alice", "wonderland")).startswith(b"235")


def test_relay_listener_auth_opens_relay(srv: Running) -> None:
    port = srv.ports["relay"]
    with RawClient(srv.host, port) as c:
        c.cmd(b"EHLO a.test")
        c.cmd(b"MAIL FROM:<a@x.test>")
        assert c.cmd(b"RCPT TO:<r@far.test>").startswith(b"554 5.7.1")
        assert c.cmd(b"RCPT TO:<r@local.test>").startswith(b"250")
        c.cmd(b"RSET")
        c.starttls(srv.client_context())
        c.cmd(b"EHLO a.test")
        assert c.cmd(b"AUTH PLAIN " + plain("alice", "wonderland")).startswith(b"235")
        c.cmd(b"MAIL FROM:<a@x.test>")
        assert c.cmd(b"RCPT TO:<r@far.test>").startswith(b"250")


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_swaks_auth(srv: Running, mech: str) -> None:
    swaks = require_tool("swaks")
    out = subprocess.run([swaks, "--server", f"{srv.host}:{srv.port}", "--tls", "--auth", mech,
                          "--auth-user", "alice", "--auth-password", "wonderland", "--from", "alice@x.test",
                          "--to", "r@far.test"], capture_output=True, timeout=30, text=True)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "235 2.7.0" in out.stdout and "250 2.0.0 Ok: queued as" in out.stdout


def test_bad_users_file_is_a_clear_start_error(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("alice:$1$md5$notsupported\n")
    with pytest.raises(AssertionError) as e:
        running(tmp_path, f'[policy]\nusers_file = "{users}"\n').__enter__()
    assert "policy.users_file" in str(e.value) and "unsupported hash scheme" in str(e.value)
