# SPDX-License-Identifier: MIT
"""SMTP smuggling over a raw socket: every bare CR/LF end-of-data variant.

A body holding a false terminator is refused whole with 550 5.6.0 after the real
CRLF.CRLF, nothing of it is queued, and the "smuggled" commands after the false
terminator are never run.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fixtures.server import RawClient, Running, queued_id, running

pytestmark = pytest.mark.timeout(60)

SMUGGLED = b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n"
VECTORS = {
    "LF.LF": b"\n.\n",
    "CR.CR": b"\r.\r",
    "LF.CRLF": b"\n.\r\n",
    "CRLF.LF": b"\r\n.\n",
    "CR.CRLF": b"\r.\r\n",
    "CRLF.CR": b"\r\n.\r",
    "bare LF in body": b"\nplain bare lf\r\n",
    "bare CR in body": b"\rplain bare cr\r\n",
}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running(tmp_path_factory.mktemp("smuggle")) as s:
        yield s


@pytest.fixture(scope="module")
def normalising(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with running(tmp_path_factory.mktemp("normalise"), '[limits]\nbare_lf = "normalise"\n') as s:
        yield s


def transaction(c: RawClient) -> None:
    c.cmd(b"EHLO s.test")
    assert c.cmd(b"MAIL FROM:<a@x.test>").startswith(b"250")
    assert c.cmd(b"RCPT TO:<b@y.test>").startswith(b"250")
    assert c.cmd(b"DATA").startswith(b"354")


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_false_terminator_refused_whole(srv: Running, name: str) -> None:
    before = len(srv.bodies())
    with RawClient(srv.host, srv.port) as c:
        transaction(c)
        c.send(b"Subject: x\r\n\r\nhello" + VECTORS[name] + SMUGGLED + b".\r\n")
        assert c.reply() == b"550 5.6.0 Message refused: bare CR or LF in message data\r\n"
        # the session continues, and nothing smuggled ran: no extra replies are waiting
        assert c.cmd(b"NOOP") == b"250 2.0.0 Ok\r\n"
        assert c.cmd(b"RCPT TO:<b@y.test>").startswith(b"503")  # the transaction is gone
    assert len(srv.bodies()) == before


def test_clean_message_after_refusal_is_accepted(srv: Running) -> None:
    with RawClient(srv.host, srv.port) as c:
        transaction(c)
        c.send(b"a\n.\nb\r\n.\r\n")
        assert c.reply().startswith(b"550 5.6.0")
        transaction(c)
        c.send(b"Subject: ok\r\n\r\n..dot-stuffed\r\n.\r\n")
        reply = c.reply()
        assert reply.startswith(b"250 2.0.0 Ok: queued as ")
    msg_id = queued_id(reply)
    assert srv.body(msg_id).endswith(b"\r\n.dot-stuffed\r\n")


def test_pipelined_smuggling_in_one_write(srv: Running) -> None:
    """Everything in one packet: the server must still find only the real end."""
    before = len(srv.bodies())
    with RawClient(srv.host, srv.port) as c:
        c.cmd(b"EHLO s.test")
        c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
        assert [r[:3] for r in c.replies(3)] == [b"250", b"250", b"354"]
        c.send(b"x\n.\r\n" + SMUGGLED + b".\r\nNOOP\r\n")
        assert c.reply().startswith(b"550 5.6.0")
        assert c.reply() == b"250 2.0.0 Ok\r\n"
    assert len(srv.bodies()) == before


def test_normalise_policy_accepts_and_fixes(normalising: Running) -> None:
    with RawClient(normalising.host, normalising.port) as c:
        transaction(c)
        c.send(b"Subject: n\r\n\r\nline1\nline2\r\n.\r\n")
        reply = c.reply()
        assert reply.startswith(b"250 2.0.0 Ok: queued as ")
    assert normalising.body(queued_id(reply)).endswith(b"line1\r\nline2\r\n")
