# SPDX-License-Identifier: MIT
"""Receiving mail with real clients (smtplib, swaks, curl, smtp-source) against a real ``fastmta serve``."""

from __future__ import annotations

import json
import signal
import smtplib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.server import RawClient, Running, queued_id, running
from tests.support import require_tool, wait_until

pytestmark = pytest.mark.timeout(60)

MSG = b"From: a@x.test\r\nTo: b@y.test\r\nSubject: hi\r\n\r\nhello\r\n"


def log_records(srv: Running, needle: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in srv.proc.log_lines() if needle in line]


def wait_log(srv: Running, msg_id: str) -> list[dict[str, object]]:
    wait_until(lambda: bool(log_records(srv, msg_id)), what=f"a log line for {msg_id}")
    return log_records(srv, msg_id)


@pytest.fixture(scope="module")
def srv(fastmta_module_server: Running) -> Running:
    return fastmta_module_server


@pytest.fixture(scope="module")
def closed_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """No relay network: only relay_domains / local_domains are accepted."""
    extra = """
    [policy]
    relay_networks = []
    relay_domains = ["relay.test"]
    local_domains = ["local.test"]
    """
    with running(tmp_path_factory.mktemp("closed"), extra) as s:
        yield s


def test_smtplib_message_is_queued_with_received_header(srv: Running) -> None:
    with smtplib.SMTP(srv.host, srv.port, timeout=30) as s:
        code, _ = s.ehlo("client.test")
        assert code == 250
        for kw in ("pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes", "chunking", "dsn"):
            assert s.has_extn(kw), kw
        assert s.esmtp_features["size"] == str(50 * 1024**2)
        assert not s.has_extn("starttls") and not s.has_extn("auth")
        s.mail("a@x.test")
        s.rcpt("b@y.test")
        code, reply = s.data(MSG)
    assert code == 250 and reply.startswith(b"2.0.0 Ok: queued as ")
    msg_id = queued_id(reply)
    body = srv.body(msg_id)
    assert body.endswith(MSG)
    received = body[: len(body) - len(MSG)].decode()
    assert received.startswith("Received: from client.test ([127.0.0.1])\r\n\tby mx.fastmta.test (fastmta)")
    assert f"with ESMTP id {msg_id}" in received and "for <b@y.test>;" in received
    assert received.endswith("+0000\r\n")
    recs = wait_log(srv, msg_id)
    assert recs[0]["event"] == "received" and recs[0]["rcpt"] == "b@y.test" and recs[0]["from"] == "a@x.test"


def test_multiple_recipients_and_null_sender(srv: Running) -> None:
    with smtplib.SMTP(srv.host, srv.port, timeout=30) as s:
        refused = s.sendmail("<>", ["r1@y.test", "r2@z.test", "<postmaster>"], MSG)
        assert refused == {}
    # one log line per recipient
    want = {"r1@y.test", "r2@z.test", "postmaster@mx.fastmta.test"}
    wait_until(lambda: {r["rcpt"] for r in log_records(srv, '"from":""')} >= want, what=f"lines for {want}")


def test_swaks_pipeline(srv: Running) -> None:
    swaks = require_tool("swaks")
    out = subprocess.run([swaks, "--server", f"{srv.host}:{srv.port}", "--pipeline", "--from", "a@x.test",
                          "--to", "b@y.test,c@y.test", "--ehlo", "swaks.test"],
                         capture_output=True, timeout=30, text=True)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "250 2.0.0 Ok: queued as" in out.stdout


def test_curl_smtp(srv: Running, tmp_path: Path) -> None:
    curl = require_tool("curl")
    f = tmp_path / "m.eml"
    f.write_bytes(MSG)
    out = subprocess.run([curl, "-sS", f"smtp://{srv.host}:{srv.port}/curl.test", "--mail-from", "a@x.test",
                          "--mail-rcpt", "b@y.test", "--upload-file", str(f), "-v"],
                         capture_output=True, timeout=30, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "250 2.0.0 Ok: queued as" in out.stderr


def test_smtp_source_volume(srv: Running) -> None:
    """500 messages over 20 concurrent sessions, all acknowledged and all in the spool."""
    before = len(srv.bodies())
    src = require_tool("smtp-source")
    out = subprocess.run([src, "-s", "20", "-m", "500", "-l", "2048", "-f", "a@x.test", "-t", "b@y.test",
                          f"{srv.host}:{srv.port}"], capture_output=True, timeout=60, text=True)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(srv.bodies()) - before == 500


def test_bdat_chunking(srv: Running) -> None:
    with RawClient(srv.host, srv.port) as c:
        c.cmd(b"EHLO raw.test")
        assert c.cmd(b"MAIL FROM:<a@x.test> BODY=8BITMIME").startswith(b"250 2.1.0")
        assert c.cmd(b"RCPT TO:<b@y.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bx@y.test").startswith(
            b"250 2.1.5"
        )
        c.send(b"BDAT 10\r\n0123456789")
        assert c.reply() == b"250 2.0.0 10 octets received\r\n"
        c.send(b"BDAT 7 LAST\r\n\r\n.\r\nab")  # binary-safe: no dot handling in BDAT
        msg_id = queued_id(c.reply())
        assert c.cmd(b"QUIT").startswith(b"221")
    assert srv.body(msg_id).endswith(b"+0000\r\n0123456789\r\n.\r\nab")


def test_bdat_100k_body_in_pipelined_chunks(srv: Running) -> None:
    """100 KiB in chunks of uneven sizes (one empty), all sent in one write the way
    Exchange pipelines them, with octets that mean something elsewhere (a DATA end,
    bare LFs, dots, a command line): the spooled body is exactly those octets."""
    unit = b"line of text\r\n..dot\r\n\r\n.\r\nbare\nLF\rCR\x00\xff RSET\r\nQUIT\r\n"
    body = (unit * (102400 // len(unit) + 1))[:102400]
    sizes = [1, 30000, 0, 40000, len(body) - 70001]
    wire, at = b"", 0
    for i, size in enumerate(sizes):
        last = b" LAST" if i == len(sizes) - 1 else b""
        wire += b"BDAT %d%s\r\n" % (size, last) + body[at : at + size]
        at += size
    with RawClient(srv.host, srv.port) as c:
        c.cmd(b"EHLO raw.test")
        c.cmd(b"MAIL FROM:<a@x.test>")
        c.cmd(b"RCPT TO:<b@y.test>")
        c.send(wire)
        acks = c.replies(len(sizes))
        assert acks[:-1] == [b"250 2.0.0 %d octets received\r\n" % size for size in sizes[:-1]]
        msg_id = queued_id(acks[-1])
        assert c.cmd(b"QUIT").startswith(b"221")
    stored = srv.body(msg_id)
    received, _, rest = stored.partition(b"+0000\r\n")
    assert received.startswith(b"Received: ") and rest == body


def test_bdat_without_transaction_is_read_and_refused(srv: Running) -> None:
    with RawClient(srv.host, srv.port) as c:
        c.cmd(b"EHLO raw.test")
        c.send(b"BDAT 12 LAST\r\nRSET\r\nQUIT\r\n")  # the chunk's bytes must never run as commands
        assert c.reply().startswith(b"503 5.5.1")
        assert c.cmd(b"NOOP") == b"250 2.0.0 Ok\r\n"


def test_pipelined_commands_answered_in_order(srv: Running) -> None:
    with RawClient(srv.host, srv.port) as c:
        c.send(b"EHLO p.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<bad>\r\nDATA\r\n")
        replies = c.replies(5)
        assert [r[:3] for r in replies] == [b"250", b"250", b"250", b"501", b"354"]
        c.send(b"Subject: p\r\n\r\nbody\r\n.\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n")
        replies = c.replies(4)
        assert replies[0].startswith(b"250 2.0.0 Ok: queued as ")
        assert [r[:3] for r in replies[1:]] == [b"250", b"250", b"354"]
        c.send(b".\r\nQUIT\r\n")
        assert c.reply().startswith(b"250 2.0.0 Ok: queued as ")
        assert c.reply().startswith(b"221 2.0.0")
        assert c.closed()


def test_misc_commands(srv: Running) -> None:
    with RawClient(srv.host, srv.port) as c:
        assert c.banner == b"220 mx.fastmta.test ESMTP fastmta\r\n"
        assert c.cmd(b"MAIL FROM:<a@x.test>").startswith(b"503 5.5.1")
        assert c.cmd(b"HELO h.test") == b"250 mx.fastmta.test\r\n"
        assert c.cmd(b"VRFY someone").startswith(b"252 2.5.0")
        assert c.cmd(b"EXPN list").startswith(b"502 5.5.1")
        assert c.cmd(b"HELP").startswith(b"214 2.0.0")
        assert c.cmd(b"NOOP") == b"250 2.0.0 Ok\r\n"
        assert c.cmd(b"FOO bar").startswith(b"500 5.5.1")
        assert c.cmd(b"RCPT TO:<b@y.test>").startswith(b"503 5.5.1")
        assert c.cmd(b"DATA").startswith(b"503 5.5.1")
        assert c.cmd(b"MAIL FROM:<a@x.test> SIZE=10").startswith(b"555 5.5.4")  # no ESMTP params after HELO
        assert c.cmd(b"MAIL FROM:<a@x.test>").startswith(b"250 2.1.0")
        assert c.cmd(b"MAIL FROM:<a@x.test>").startswith(b"503 5.5.1")
        assert c.cmd(b"RSET") == b"250 2.0.0 Reset\r\n"
        assert c.cmd(b"STARTTLS").startswith(b"454 4.7.0")
        assert c.cmd(b"AUTH PLAIN AGEAYg==").startswith(b"503 5.5.1")
        assert c.cmd(b"QUIT") == b"221 2.0.0 Bye\r\n"


@pytest.mark.parametrize(
    ("mail", "rcpt", "expect"),
    [
        (b'<"john doe"@x.test>', b"<b@y.test>", b"250"),
        (b'<"a\\"b"@x.test>', b"<b@y.test>", b"250"),
        (b"<@relay1.test,@relay2.test:a@x.test>", b"<@r.test:b@y.test>", b"250"),
        (b"<a@[127.0.0.1]>", b"<b@[IPv6:::1]>", b"250"),
        (b" <a@x.test>", b"<b@y.test>", b"250"),
        (b"a@x.test", b"b@y.test", b"250"),
        (b"<a@x.test", b"<b@y.test>", b"501 5.1.3"),
        (b"<a@@x.test>", b"<b@y.test>", b"501 5.1.7"),
        (b"<a@x.test>", b"<b@y..test>", b"501 5.1.3"),
        (b"<a@x.test>", b"<>", b"501 5.1.3"),
        (b"<" + b"a" * 65 + b"@x.test>", b"<b@y.test>", b"501 5.1.7"),
        ("<jörg@x.test>".encode(), b"<b@y.test>", b"553 5.6.7"),
        ("<jörg@x.test> SMTPUTF8".encode(), "<ü@ÿ.test>".encode(), b"250"),
        (b"<a@x.test> SIZE=99999999999", b"<b@y.test>", b"552 5.3.4"),
        (b"<a@x.test> BODY=BINARYMIME", b"<b@y.test>", b"555 5.5.4"),
        (b"<a@x.test> FOO=bar", b"<b@y.test>", b"555 5.5.4"),
        (b"<a@x.test> RET=HDRS ENVID=abc+2Bd", b"<b@y.test> NOTIFY=NEVER", b"250"),
        (b"<a@x.test>", b"<b@y.test> NOTIFY=NEVER,SUCCESS", b"555 5.5.4"),
        (b"\xff\xfe", b"<b@y.test>", b"501 5.5.4"),
    ],
)
def test_address_syntax(srv: Running, mail: bytes, rcpt: bytes, expect: bytes) -> None:
    with RawClient(srv.host, srv.port) as c:
        c.cmd(b"EHLO a.test")
        r1 = c.cmd(b"MAIL FROM:" + mail)
        if not r1.startswith(b"250"):
            assert r1.startswith(expect), r1
            return
        r2 = c.cmd(b"RCPT TO:" + rcpt)
        assert r2.startswith(expect), r2


def test_garbage_never_crashes(srv: Running) -> None:
    payloads = [b"\x00" * 100 + b"\r\n", b"\xff\xfe\xfd garbage\r\n", b"EHLO \x00x\r\n",
                b"A" * 100_000 + b"\r\n", b"\r\n" * 50, b"MAIL FROM:<\x00@x.test>\r\n",
                bytes(range(256)) + b"\r\n", b"\n\n\r\r\n"]  # fmt: skip
    for p in payloads:
        with RawClient(srv.host, srv.port) as c:
            c.send(p)
            c.send(b"NOOP\r\n")
            seen = b""
            while b"250 2.0.0 Ok" not in seen and b"421 4.7.0" not in seen:  # 50 empty lines: too many errors
                seen += c.reply()
    with RawClient(srv.host, srv.port) as c:
        assert c.cmd(b"NOOP") == b"250 2.0.0 Ok\r\n"


def test_client_drop_mid_data_queues_nothing(srv: Running) -> None:
    before = len(srv.bodies())
    with RawClient(srv.host, srv.port) as c:
        c.cmd(b"EHLO a.test")
        c.cmd(b"MAIL FROM:<a@x.test>")
        c.cmd(b"RCPT TO:<b@y.test>")
        assert c.cmd(b"DATA").startswith(b"354")
        c.send(b"Subject: cut\r\n\r\nhalf a message\r\n.")
    time.sleep(0.3)
    assert len(srv.bodies()) == before
    with RawClient(srv.host, srv.port) as c:
        assert c.cmd(b"NOOP").startswith(b"250")


def test_relay_policy(closed_srv: Running) -> None:
    with RawClient(closed_srv.host, closed_srv.port) as c:
        c.cmd(b"EHLO a.test")
        c.cmd(b"MAIL FROM:<a@x.test>")
        assert c.cmd(b"RCPT TO:<b@elsewhere.test>") == b"554 5.7.1 Relay access denied\r\n"
        assert c.cmd(b"RCPT TO:<b@relay.test>").startswith(b"250 2.1.5")
        assert c.cmd(b"RCPT TO:<b@LOCAL.test>").startswith(b"250 2.1.5")
        assert c.cmd(b"RCPT TO:<postmaster>").startswith(b"250 2.1.5")


def test_bytes_arriving_during_the_commit_wait(srv: Running) -> None:
    """Commands sent during the spool commit wait unparsed, in order; a flood pauses reading."""
    with RawClient(srv.host, srv.port) as c:
        c.cmd(b"EHLO w.test")
        c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
        assert [r[:3] for r in c.replies(3)] == [b"250", b"250", b"354"]
        c.send(b"Subject: w\r\n\r\nx\r\n.\r\n")
        c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")  # likely lands mid-commit
        c.send(b"body of the second\r\n.\r\n" + b"NOOP\r\n" * 60_000)  # 360 KB flood
        assert c.reply().startswith(b"250 2.0.0 Ok: queued as ")
        assert [r[:3] for r in c.replies(3)] == [b"250", b"250", b"354"]
        assert c.reply().startswith(b"250 2.0.0 Ok: queued as ")
        for _ in range(60_000):
            assert c.reply() == b"250 2.0.0 Ok\r\n"
        assert c.cmd(b"QUIT").startswith(b"221")


def test_talking_before_the_banner_is_logged(srv: Running) -> None:
    polite = RawClient(srv.host, srv.port)  # reads the banner first: never flagged
    polite.cmd(b"NOOP")
    polite.close()
    assert "talked before the banner" not in srv.proc.stderr()
    # The bytes must be queued before the accept. The kernel completes the handshake
    # and queues them while the server is stopped, so this never depends on who is faster.
    srv.proc.signal(signal.SIGSTOP)
    try:
        s = socket.create_connection((srv.host, srv.port), timeout=30)
        s.sendall(b"EHLO eager.test\r\n")
    finally:
        srv.proc.signal(signal.SIGCONT)
    with s:
        data = b""
        while b"250 " not in data:
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
    assert data.startswith(b"220 ")  # answered normally all the same
    # Logged before the banner is written, so already there.
    assert "client 127.0.0.1 talked before the banner" in srv.proc.stderr()


def test_local_domain_unknown_mailbox_is_550(tmp_path: Path) -> None:
    users = tmp_path / "local-users"
    users.write_text("alice\n")
    extra = '[policy]\nlocal_domains = ["l.test"]\n'
    extra += f'[local]\nmaildir = "{tmp_path / "mail"}"\nusers_file = "{users}"\n'
    with running(tmp_path, extra) as s, RawClient(s.host, s.port) as c:
        c.cmd(b"EHLO a.test")
        c.cmd(b"MAIL FROM:<a@x.test>")
        assert c.cmd(b"RCPT TO:<alice@l.test>").startswith(b"250 2.1.5")
        assert c.cmd(b"RCPT TO:<bob@L.test>") == b"550 5.1.1 Mailbox unavailable\r\n"
        assert c.cmd(b"RCPT TO:<postmaster@l.test>").startswith(b"250 2.1.5")
        assert c.cmd(b"RCPT TO:<bob@elsewhere.test>").startswith(b"250 2.1.5")  # not local: relayed


def test_dsn_and_utf8_parameters_reach_the_envelope(srv: Running) -> None:
    with RawClient(srv.host, srv.port) as c:
        c.cmd(b"EHLO e.test")
        mail = "MAIL FROM:<jörg@x.test> SMTPUTF8 BODY=8BITMIME RET=HDRS ENVID=q+2Bid SIZE=100"
        assert c.cmd(mail.encode()).startswith(b"250")
        assert c.cmd(b"RCPT TO:<a@y.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;a+2Bz@y.test").startswith(b"250")
        assert c.cmd("RCPT TO:<ü@y.test> NOTIFY=NEVER".encode()).startswith(b"250")
        c.cmd(b"DATA")
        reply = c.cmd(b"Subject: e\r\n\r\nx\r\n.")
    msg_id = queued_id(reply)
    env = srv.envelope(msg_id)
    assert env.sender == "jörg@x.test" and env.helo == "e.test" and env.client_ip == "127.0.0.1"
    assert env.listener == "mx"
    assert env.params == {"SMTPUTF8": "", "BODY": "8BITMIME", "RET": "HDRS", "ENVID": "q+id"}
    assert [(r.addr, r.notify, r.orcpt) for r in env.rcpts] == [
        ("a@y.test", "FAILURE,DELAY", "rfc822;a+z@y.test"),
        ("ü@y.test", "NEVER", ""),
    ]
    assert b" with UTF8SMTP id " in srv.body(msg_id)
