# SPDX-License-Identifier: MIT
"""The outbound SMTP connection against a scripted loopback peer (byte-exact dialogs)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastmta.delivery.client import HostError, SmtpClient, parse_ehlo, to_reply
from fastmta.delivery.mx import Host
from fastmta.errors import Reply
from tests.integration.test_delivery_client import run

pytestmark = pytest.mark.timeout(30)

Peer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def test_to_reply() -> None:
    assert to_reply(250, [b"2.1.0 Ok"]) == Reply(250, "2.1.0", "Ok")
    assert to_reply(550, [b"5.1.1 No such", b"5.1.1 user here"]) == Reply(550, "5.1.1", "No such user here")
    assert to_reply(250, [b"Ok"]) == Reply(250, "2.0.0", "Ok")  # no enhanced code: derived
    assert to_reply(421, [b"5.0.0 mismatched class"]).enhanced == "4.0.0"
    assert to_reply(354, [b"End data with <CR><LF>.<CR><LF>"]).text == "End data with <CR><LF>.<CR><LF>"
    assert to_reply(250, [b"2.0.0"]) == Reply(250, "2.0.0", "")
    assert to_reply(451, [b"4.3.0 caf\xc3\xa9 \xff"]).text == "caf\u00e9 \ufffd"


def test_parse_ehlo() -> None:
    lines = [b"mx.a.test Hello", b"PIPELINING", b"SIZE 1000", b"auth PLAIN LOGIN", b"8BITMIME", b""]
    assert parse_ehlo(lines) == {"PIPELINING": "", "SIZE": "1000", "AUTH": "PLAIN LOGIN", "8BITMIME": ""}


def with_peer(peer: Peer, body: Callable[[SmtpClient], Awaitable[object]], timeout: float = 2.0) -> object:
    async def go() -> object:
        server = await asyncio.start_server(peer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            client = await SmtpClient.open(Host("peer.test", "127.0.0.1", port), "me.test", 2.0, timeout)
            try:
                return await body(client)
            finally:
                client.abort()
        finally:
            server.close()

    return run(go)


async def read_lines(reader: asyncio.StreamReader, n: int) -> list[bytes]:
    return [await reader.readline() for _ in range(n)]


def test_pipelined_group_is_sent_before_any_reply() -> None:
    seen: list[bytes] = []

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 peer ESMTP\r\n")
        await reader.readline()
        writer.write(b"250-peer\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
        seen.extend(await read_lines(reader, 4))  # MAIL, 2 RCPT, DATA: all before we answer
        writer.write(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no\r\n354 go\r\n")
        data = await reader.readuntil(b"\r\n.\r\n")
        seen.append(data)
        writer.write(b"250 2.0.0 queued\r\n")
        await reader.read()

    async def body(c: SmtpClient) -> object:
        rcpts = [b"RCPT TO:<b@y.test>\r\n", b"RCPT TO:<c@y.test>\r\n"]
        return await c.send(b"MAIL FROM:<a@x.test>\r\n", rcpts, b".hidden\r\nline", reset=False)

    tx = with_peer(peer, body)
    assert seen[:4] == [b"MAIL FROM:<a@x.test>\r\n", b"RCPT TO:<b@y.test>\r\n", b"RCPT TO:<c@y.test>\r\n",
                        b"DATA\r\n"]  # fmt: skip
    assert seen[4] == b"..hidden\r\nline\r\n.\r\n"
    assert tx.mail.code == 250 and [r.code for r in tx.rcpts] == [250, 550] and tx.data.code == 250  # type: ignore[attr-defined]


def test_replies_split_at_every_byte() -> None:
    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for b in b"220-peer\r\n220 ESMTP\r\n":
            writer.write(bytes([b]))
            await writer.drain()
        await reader.readline()
        for b in b"250-peer\r\n250 SIZE 10\r\n":
            writer.write(bytes([b]))
            await writer.drain()
        await reader.read()

    async def body(c: SmtpClient) -> object:
        return c.ext

    assert with_peer(peer, body) == {"SIZE": "10"}


def test_helo_fallback_when_ehlo_is_refused() -> None:
    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 old\r\n")
        assert (await reader.readline()).startswith(b"EHLO")
        writer.write(b"502 5.5.1 what?\r\n")
        assert (await reader.readline()) == b"HELO me.test\r\n"
        writer.write(b"250 old\r\n")
        await reader.read()

    async def body(c: SmtpClient) -> object:
        return c.ext

    assert with_peer(peer, body) == {}


def test_malformed_reply_breaks_the_connection() -> None:
    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 peer\r\n")
        await reader.readline()
        writer.write(b"250 peer\r\n")
        await reader.readline()
        writer.write(b"what is this\r\n")
        await reader.read()

    async def body(c: SmtpClient) -> object:
        reply = await c.command(b"NOOP\r\n")
        return reply, c.usable, c.error

    assert with_peer(peer, body) == (None, False, "lost")


def test_unsolicited_421_makes_the_connection_unusable() -> None:
    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 peer\r\n")
        await reader.readline()
        writer.write(b"250 peer\r\n421 4.4.2 idle too long\r\n")
        await reader.read()

    async def body(c: SmtpClient) -> object:
        await asyncio.sleep(0.05)
        return c.usable

    assert with_peer(peer, body) is False


def test_greeting_failures_raise_host_error() -> None:
    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"421 4.7.0 busy\r\n")
        writer.close()

    async def go() -> HostError:
        server = await asyncio.start_server(peer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(HostError) as e:
                await SmtpClient.open(Host("peer.test", "127.0.0.1", port), "me.test", 2.0, 2.0)
            return e.value
        finally:
            server.close()

    err = run(go)
    assert err.kind == "greeting" and err.reply == Reply(421, "4.7.0", "busy")


def test_silent_peer_times_out() -> None:
    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 peer\r\n")
        await reader.readline()
        writer.write(b"250 peer\r\n")
        await reader.read()

    async def body(c: SmtpClient) -> object:
        tx = await c.send(b"MAIL FROM:<>\r\n", [b"RCPT TO:<b@y.test>\r\n"], b"x\r\n", reset=True)
        return tx.error, tx.mail, c.usable

    assert with_peer(peer, body, timeout=0.3) == ("timeout", None, False)


@given(
    code=st.integers(200, 599),
    lines=st.lists(
        st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b), min_size=1, max_size=4
    ),
)
@settings(max_examples=300, deadline=None)
def test_to_reply_never_fails_and_keeps_the_class(code: int, lines: list[bytes]) -> None:
    reply = to_reply(code, lines)
    assert reply.code == code
    assert reply.enhanced.split(".")[0] == str(code // 100) and len(reply.enhanced.split(".")) == 3
    assert "\n" not in reply.text and "\r" not in reply.text
