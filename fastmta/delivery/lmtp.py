# SPDX-License-Identifier: MIT
"""RFC 2033 LMTP client: hands local mail to an MDA, one reply per accepted recipient.

Owns the LMTP session (greeting, LHLO, MAIL/RCPT/DATA, pipelined when offered),
the ``[local] lmtp`` target (``host:port`` or ``unix:/path``) and its idle
sessions, kept in the shared delivery ``Pool``. Replies are parsed by the shared
``ReplyParser``/``to_reply``. It never raises to the caller and never checks
addresses: the caller passes only recipients it vetted, and gets one outcome
each; a session lost mid-way keeps the replies that already came.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from fastmta import metrics
from fastmta.config import Config, parse_hostport
from fastmta.delivery import replies
from fastmta.delivery.capability import unfit
from fastmta.delivery.classify import failure_outcome
from fastmta.delivery.client import parse_ehlo, to_reply
from fastmta.delivery.pool import Pool
from fastmta.errors import Deferred, Delivered, Outcome, Reply
from fastmta.parser import ReplyParser, encode_data

log = logging.getLogger(__name__)

R_LMTP_DOWN = Reply(421, "4.4.1", "LMTP server unavailable")


def _ok(reply: Reply) -> bool:
    return 200 <= reply.code < 300


def _outcome(reply: Reply) -> Outcome:
    return Delivered(reply) if _ok(reply) else failure_outcome(reply)


def lmtp_target(spec: str) -> tuple[str | None, tuple[str, int] | None, str]:
    """``"unix:/path"`` or ``"host:port"`` → (unix path, (host, port), nexthop label)."""
    if spec.startswith("unix:"):
        return spec[5:], None, f"lmtp:{spec}"
    host, port = parse_hostport(spec)
    return None, (host, port), f"lmtp:[{host}]:{port}"


class _LmtpClosed(Exception):
    """The LMTP server went away before a reply."""


class _Refused(Exception):
    """The LMTP server refused the session (greeting or LHLO not accepted)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


class _Stale(Exception):
    """A reused idle LMTP connection turned out dead before the first reply."""


class LmtpConnection:
    """One LMTP session (after LHLO), shaped as the ``Pool`` wants: ``messages``, ``usable``,
    ``abort()``, ``quit()``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float):
        self.reader, self.writer, self.timeout = reader, writer, timeout
        self._parser = ReplyParser()
        self._ready: list[tuple[int, list[bytes]]] = []
        self.ext: dict[str, str] = {}
        self.messages = 0  # transactions started, for the reuse cap
        self._active: Any = metrics.bound(metrics.destination_connections_active)
        self._active.inc()

    @property
    def usable(self) -> bool:
        """Open, and no reply arrived that nobody asked for (typically 421 before a close)."""
        return not self.reader.at_eof() and not self.writer.is_closing() and not self._ready

    async def raw_reply(self) -> tuple[int, list[bytes]]:
        while not self._ready:
            data = await asyncio.wait_for(self.reader.read(65536), self.timeout)
            if not data:
                raise _LmtpClosed
            self._ready.extend(self._parser.feed(data))
        return self._ready.pop(0)

    async def reply(self) -> Reply:
        return to_reply(*await self.raw_reply())

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), self.timeout)

    def abort(self) -> None:
        """Close without QUIT; the active-connections gauge counts each connection once."""
        if self._active is not None:
            self._active.dec()
            self._active = None
        self.writer.close()

    async def drop(self) -> None:
        """Close without QUIT and wait (briefly) until the socket is gone."""
        self.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)

    async def quit(self) -> None:
        """QUIT politely (short wait), then close."""
        if not self.writer.is_closing():
            with contextlib.suppress(Exception):
                await self.send(b"QUIT\r\n")
                await asyncio.wait_for(self.reply(), 1.0)
        await self.drop()


class LmtpClient:
    """Delivers one message at a time to the ``[local] lmtp`` server, reusing idle sessions."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.target = cfg.local.lmtp  # one target per client: every idle session is interchangeable
        self._unix, self._addr, self.nexthop = lmtp_target(self.target)
        d = cfg.delivery
        self._pool: Pool[LmtpConnection] = Pool(d.max_messages_per_connection, d.idle_timeout)

    def reload(self, cfg: Config) -> None:
        """SIGHUP, same target: new timeouts and reuse limits from the next delivery."""
        self.cfg = cfg
        self._pool.max_messages = cfg.delivery.max_messages_per_connection
        self._pool.idle_timeout = cfg.delivery.idle_timeout

    async def deliver(
        self, msg_id: str, sender: str, params: Mapping[str, str], rcpts: list[tuple[int, str]], body: bytes
    ) -> dict[int, Outcome]:
        """One outcome per ``(index, address)`` in ``rcpts``; ``sender`` is already free of
        control characters (it goes on a command line). A reused session found dead
        before its first reply is retried once on a fresh one."""
        outcomes: dict[int, Outcome] = {}
        for reused in (True, False):
            conn = self._pool.get(self.target) if reused else None
            if reused and conn is None:
                continue
            try:
                if conn is None:
                    conn = await self._connect()
                await self._transaction(conn, sender, params, rcpts, body, reused, outcomes)
            except _Stale:
                await _drop(conn)
                continue
            except Exception as e:
                await _drop(conn)
                failed = _failure_outcome(e, connected=conn is not None)
                log.warning("LMTP %s: %s: %r", self.nexthop, msg_id, e)
                outcomes.update({i: failed for i, _ in rcpts if i not in outcomes})
            else:
                await self._pool.release(self.target, conn)
            break
        return outcomes

    async def close(self) -> None:
        await self._pool.close()

    async def _connect(self) -> LmtpConnection:
        timeout = self.cfg.delivery.connect_timeout
        if self._unix is not None:
            opening = asyncio.open_unix_connection(self._unix)
        else:
            assert self._addr is not None
            opening = asyncio.open_connection(*self._addr)
        attempts = metrics.delivery_connections_total
        try:
            reader, writer = await asyncio.wait_for(opening, timeout)
        except TimeoutError:
            metrics.bound(attempts, "timeout").inc()
            raise
        except OSError:
            metrics.bound(attempts, "refused").inc()
            raise
        conn = LmtpConnection(reader, writer, self.cfg.delivery.command_timeout)
        try:
            greeting = await conn.reply()
            if greeting.code != 220:
                raise _Refused(greeting)
            await conn.send(b"LHLO " + self.cfg.hostname.encode("utf-8") + b"\r\n")
            code, lines = await conn.raw_reply()
            if code != 250:
                raise _Refused(to_reply(code, lines))
        except BaseException:
            metrics.bound(attempts, "greeting").inc()
            await conn.drop()
            raise
        metrics.bound(attempts, "ok").inc()
        conn.ext = parse_ehlo(lines)
        return conn

    async def _transaction(
        self, conn: LmtpConnection, sender: str, params: Mapping[str, str], rcpts: list[tuple[int, str]],
        body: bytes, stale_ok: bool, outcomes: dict[int, Outcome],
    ) -> None:  # fmt: skip
        """MAIL, RCPT…, DATA, then one reply per accepted recipient (RFC 2033 §4.2).

        Outcomes go into ``outcomes`` as replies arrive, so a connection lost after
        some per-recipient replies keeps those (no duplicate for a delivered one).
        A message the server cannot take (no SMTPUTF8 for UTF-8 addresses, no
        8BITMIME, too big) fails for every recipient before MAIL, as over SMTP.
        """
        refusal = unfit(conn.ext, sender, (addr for _, addr in rcpts), params, body)
        if refusal is not None:
            outcomes.update(dict.fromkeys((i for i, _ in rcpts), refusal))
            return
        conn.messages += 1
        mail = b"MAIL FROM:<" + sender.encode("utf-8", "surrogateescape") + b">"
        if params.get("BODY") and "8BITMIME" in conn.ext:
            mail += b" BODY=" + str(params["BODY"]).encode()
        if "SMTPUTF8" in params and "SMTPUTF8" in conn.ext:
            mail += b" SMTPUTF8"
        commands = [mail + b"\r\n"]
        commands += [b"RCPT TO:<" + addr.encode("utf-8", "surrogateescape") + b">\r\n" for _, addr in rcpts]
        # RFC 2033 §4.1 makes PIPELINING mandatory for LMTP servers; fall back anyway.
        pipelined = "PIPELINING" in conn.ext
        await conn.send(b"".join(commands) + b"DATA\r\n" if pipelined else commands[0])
        try:
            mail_reply = await conn.reply()
        except (_LmtpClosed, ConnectionError):
            if stale_ok:
                raise _Stale from None
            raise
        if stale_ok and mail_reply.code == 421:  # the server timed the idle session out
            raise _Stale
        accepted: list[int] = []
        for n, (i, _) in enumerate(rcpts):
            if not _ok(mail_reply):
                outcomes[i] = _outcome(mail_reply)
                continue
            if not pipelined:
                await conn.send(commands[n + 1])
            rcpt_reply = await conn.reply()
            if _ok(rcpt_reply):
                accepted.append(i)
            else:
                outcomes[i] = _outcome(rcpt_reply)
        if pipelined:
            if not _ok(mail_reply):
                for _ in rcpts:  # the RCPT replies after a refused MAIL
                    await conn.reply()
        elif not accepted:
            return
        else:
            await conn.send(b"DATA\r\n")
        data_reply = await conn.reply()
        if data_reply.code != 354:
            outcomes.update({i: _outcome(data_reply) for i in accepted})
            return
        await conn.send(encode_data(body))
        if not accepted:  # a server that said 354 with no valid recipient: finish cleanly
            await conn.reply()
            return
        for i in accepted:
            outcomes[i] = _outcome(await conn.reply())


async def _drop(conn: LmtpConnection | None) -> None:
    if conn is not None:
        await conn.drop()


def _failure_outcome(e: Exception, connected: bool) -> Outcome:
    """The outcome for the recipients still open when the LMTP session failed with ``e``."""
    if isinstance(e, _Refused):
        return _outcome(e.reply)
    if isinstance(e, TimeoutError):
        return Deferred(replies.TIMEOUT, "timeout")
    if isinstance(e, (OSError, _LmtpClosed)):
        return Deferred(replies.CONNECTION_LOST if connected else R_LMTP_DOWN, "connection")
    return Deferred(replies.PROTOCOL, "other")  # ParserError: not an LMTP server
