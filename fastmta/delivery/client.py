# SPDX-License-Identifier: MIT
"""One outbound SMTP connection as an ``asyncio.Protocol``.

Replies are parsed by the shared ``ReplyParser`` straight from ``data_received``
and handed to waiting futures in order: no StreamReader, no coroutine per line.
A transaction is one write when the next hop offers PIPELINING (RSET, MAIL, every
RCPT and DATA, or with CHUNKING even ``BDAT n LAST`` and the body) and one timer
per round trip. The connection never raises SMTP replies as exceptions: callers
get ``Reply`` objects, or ``None`` for a reply that never came, and decide.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import ssl
from dataclasses import dataclass
from typing import Any

from fastmta import metrics
from fastmta.delivery.mx import Host
from fastmta.errors import Reply
from fastmta.parser import ParserError, ReplyParser, encode_data

_CLASS_DIGITS = b"245"
_Raw = tuple[int, list[bytes]]  # (code, text lines) as ReplyParser gives them
_REPLIES: dict[tuple[int, bytes], Reply] = {}
_REPLIES_MAX = 4096


class HostError(Exception):
    """Setting up a session with one host failed; try the next one. ``reply`` says why."""

    def __init__(self, reply: Reply, kind: str) -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.kind = kind  # refused | timeout | greeting | ehlo | tls | auth | lost


class ConnectionLost(Exception):
    """The peer closed the connection, it broke, or it stopped making sense."""


def to_reply(code: int, lines: list[bytes]) -> Reply:
    """``(250, [b"2.1.0 Ok"])`` → Reply(250, "2.1.0", "Ok"); the enhanced code is optional.

    One-line replies repeat (every "250 2.1.5 Ok" of a server), so they are cached.
    """
    if len(lines) == 1:
        key = (code, lines[0])
        reply = _REPLIES.get(key)
        if reply is None:
            if len(_REPLIES) >= _REPLIES_MAX:
                _REPLIES.clear()
            reply = _REPLIES[key] = _to_reply(code, lines)
        return reply
    return _to_reply(code, lines)


def _to_reply(code: int, lines: list[bytes]) -> Reply:
    first = lines[0] if lines else b""
    enhanced = ""
    if (
        len(first) >= 5 and first[0] in _CLASS_DIGITS and first[1:2] == b"." and first[0] == 48 + code // 100
    ):  # "d.ddd.ddd" then a space or the end
        sp = first.find(b" ")
        cand = first[:sp] if sp > 0 else first
        parts = cand.split(b".")
        if len(parts) == 3 and all(p.isdigit() and len(p) <= 3 for p in parts):
            enhanced = cand.decode("ascii")
            prefix = cand + b" "
            lines = [ln[len(prefix) :] if ln.startswith(prefix) else ln for ln in lines]
            lines[0] = first[len(cand) :].lstrip(b" ")
    text = b" ".join(ln.strip() for ln in lines).decode("utf-8", "replace")
    return Reply(code, enhanced or f"{code // 100}.0.0", text)


@dataclass(slots=True)
class Transaction:
    """What one message got: MAIL's reply, each RCPT's, and the final reply (None = none came)."""

    mail: Reply | None
    rcpts: list[Reply | None]
    data: Reply | None
    error: str = ""  # "", "timeout" or "lost": the connection failed before every reply came


class SmtpClient(asyncio.Protocol):
    """One connection to one host; ``open()`` builds it through greeting and EHLO."""

    def __init__(self, host: Host, command_timeout: float) -> None:
        self.host = host
        self.command_timeout = command_timeout
        self.ext: dict[str, str] = {}  # EHLO keyword → parameters
        self.tls: str | None = None
        self.verified = False  # TLS with the peer authenticated (WebPKI for the MX name, or DANE)
        self.policy = ""  # the TLS policy the session was made under (the ``tls_policy`` log field)
        self.messages = 0  # transactions started on this connection
        self.clean = True  # every reply so far was read and none said 421
        self.needs_reset = False  # the server may be mid-transaction: RSET before the next MAIL
        self._loop = asyncio.get_running_loop()
        self._parser = ReplyParser()
        self._waiters: collections.deque[asyncio.Future[_Raw]] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self._lost: BaseException | None = None
        self._unsolicited: Reply | None = None
        self._drain: asyncio.Future[None] | None = None
        self._active = metrics.bound(metrics.destination_connections_active)
        self._open = False
        self._gone: asyncio.Future[None] = self._loop.create_future()  # resolved by connection_lost
        self._greeting = self._expect(1)  # registered before any byte can arrive

    # --- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._open = True
        self._active.inc()

    def data_received(self, data: bytes) -> None:
        try:
            replies = self._parser.feed(data)
        except ParserError:
            self._fail(ConnectionLost("malformed reply"))
            self.abort()
            return
        waiters = self._waiters
        for raw in replies:
            while waiters:
                fut = waiters.popleft()
                if not fut.done():
                    fut.set_result(raw)
                    break
            else:  # nobody asked: typically "421 shutting down" before a close
                self._unsolicited = to_reply(*raw)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._open:  # idempotent: a failed TLS upgrade calls it itself
            self._open = False
            self._active.dec()
        self._fail(ConnectionLost(str(exc) if exc else "connection closed"))
        if not self._gone.done():
            self._gone.set_result(None)
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self._drain = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    def _fail(self, exc: BaseException) -> None:
        if self._lost is None:
            self._lost = exc
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(self._lost)
                fut.exception()  # a caller may wait only for the last one

    # --- state ---------------------------------------------------------------------------
    @property
    def usable(self) -> bool:
        """Open, in a known state, and not told to go away."""
        t = self._transport
        return (
            self._lost is None and self.clean and self._unsolicited is None
            and t is not None and not t.is_closing()
        )  # fmt: skip

    @property
    def nexthop(self) -> str:
        return str(self.host)

    def ssl_object(self) -> Any:
        """The ``ssl.SSLObject`` after STARTTLS (peer certificates for DANE), else None."""
        if self._transport is None or self.tls is None:
            return None
        return self._transport.get_extra_info("ssl_object")

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # --- I/O primitives --------------------------------------------------------------------
    def _expect(self, n: int) -> list[asyncio.Future[_Raw]]:
        futs = [self._loop.create_future() for _ in range(n)]
        if self._lost is not None:
            for f in futs:
                f.set_exception(self._lost)
                f.exception()
        else:
            self._waiters.extend(futs)
        return futs

    def _write(self, *chunks: bytes) -> None:
        if self._transport is None or self._lost is not None:
            return
        if len(chunks) == 1:
            self._transport.write(chunks[0])
        else:
            self._transport.writelines(chunks)

    async def _collect(
        self, futs: list[asyncio.Future[_Raw]], timeout: float | None = None
    ) -> list[Reply | None]:
        """Wait for the replies (one timer for all); missing ones are None, the error is kept."""
        raws = await self._collect_raw(futs, timeout)
        out = [None if raw is None else to_reply(*raw) for raw in raws]
        if any(r is not None and r.code == 421 for r in out):
            self.clean = False  # RFC 5321 §3.8: the server is closing the channel
        return out

    async def _collect_raw(
        self, futs: list[asyncio.Future[_Raw]], timeout: float | None
    ) -> list[_Raw | None]:
        timer = self._loop.call_later(timeout or self.command_timeout, self._timeout)
        try:
            if self._drain is not None:  # the peer is slow to read what we wrote
                await self._drain
            await futs[-1]
        except (ConnectionLost, TimeoutError):
            self.clean = False
        finally:
            timer.cancel()
        return [f.result() if f.done() and f.exception() is None else None for f in futs]

    def _timeout(self) -> None:
        self._fail(TimeoutError("no reply in time"))
        self.abort()

    async def command(self, line: bytes, timeout: float | None = None) -> Reply | None:
        """Send one command line (with CRLF) and wait for its reply."""
        futs = self._expect(1)
        self._write(line)
        return (await self._collect(futs, timeout))[0]

    @property
    def error(self) -> str:
        if self._lost is None:
            return ""
        return "timeout" if isinstance(self._lost, TimeoutError) else "lost"

    # --- session setup -------------------------------------------------------------------------
    @classmethod
    async def open(cls, host: Host, helo: str, connect_timeout: float, command_timeout: float,
                   source: str = "") -> SmtpClient:  # fmt: skip
        """Connect (from the ``source`` address when given), read the greeting, EHLO (HELO if
        refused). Raises HostError."""
        loop = asyncio.get_running_loop()
        counter = metrics.delivery_connections_total
        try:
            async with asyncio.timeout(connect_timeout):
                _, client = await loop.create_connection(
                    lambda: cls(host, command_timeout),
                    host.address,
                    host.port,
                    local_addr=(source, 0) if source else None,
                )
        except TimeoutError:
            metrics.bound(counter, "timeout").inc()
            raise HostError(Reply(421, "4.4.1", f"Connection timed out to {host}"), "timeout") from None
        except OSError as e:
            metrics.bound(counter, "refused").inc()
            raise HostError(
                Reply(421, "4.4.1", f"Connection refused by {host}: {e.strerror}"), "refused"
            ) from None
        greeting = (await client._collect(client._greeting))[0]
        if greeting is None or greeting.code != 220:
            client.abort()
            metrics.bound(counter, "greeting").inc()
            if greeting is None:
                kind = client.error or "lost"
                reply = Reply(421, "4.4.2", f"{host} closed the connection or sent no greeting")
                raise HostError(reply, kind)
            raise HostError(greeting, "greeting")
        await client.hello(helo)
        metrics.bound(counter, "ok").inc()
        return client

    async def hello(self, helo: str) -> None:
        """EHLO, falling back to HELO on a refusal; fills ``ext``."""
        futs = self._expect(1)
        self._write(b"EHLO " + _name(helo) + b"\r\n")
        raw = (await self._collect_raw(futs, None))[0]
        if raw is not None and raw[0] == 250:
            self.ext = parse_ehlo(raw[1])
            return
        reply = None if raw is None else to_reply(*raw)
        if reply is not None and reply.code >= 500:
            reply = await self.command(b"HELO " + _name(helo) + b"\r\n")
            if reply is not None and reply.code == 250:
                self.ext = {}
                return
        self.abort()
        raise HostError(reply or Reply(421, "4.4.2", f"{self.host} closed the connection at EHLO"), "ehlo")

    async def starttls(self, context: ssl.SSLContext, server_hostname: str | None, helo: str) -> None:
        """STARTTLS, handshake, EHLO again. Raises HostError: kind "starttls" when the
        command was refused (the session is still usable), "tls" for anything else."""
        reply = await self.command(b"STARTTLS\r\n")
        if reply is None or reply.code != 220:
            if reply is None:
                raise HostError(Reply(421, "4.4.2", "lost at STARTTLS"), "tls")
            raise HostError(reply, "starttls")  # refused; the plaintext session still stands
        assert self._transport is not None
        try:
            transport = await self._loop.start_tls(
                self._transport, self, context, server_hostname=server_hostname,
                ssl_handshake_timeout=self.command_timeout,
            )  # fmt: skip
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError) as e:
            self.abort()
            self.connection_lost(e)
            raise HostError(
                Reply(451, "4.7.5", f"TLS handshake with {self.host} failed: {e}"), "tls"
            ) from None
        if transport is None:
            raise HostError(Reply(451, "4.7.5", f"TLS handshake with {self.host} failed"), "tls")
        self._transport = transport
        self._parser = ReplyParser()  # nothing said in plaintext survives (RFC 3207 §4.2)
        ssl_obj = transport.get_extra_info("ssl_object")
        self.tls = ssl_obj.version() if ssl_obj is not None else "TLS"
        await self.hello(helo)

    async def auth(self, user: str, password: str) -> Reply | None:
        """AUTH PLAIN (or LOGIN when only that is offered); the final reply, or None if lost."""
        mechanisms = self.ext.get("AUTH", "").upper().split()
        if "PLAIN" in mechanisms or "LOGIN" not in mechanisms:
            token = base64.b64encode(f"\0{user}\0{password}".encode()).decode("ascii")
            return await self.command(f"AUTH PLAIN {token}\r\n".encode("ascii"))
        reply = await self.command(b"AUTH LOGIN\r\n")
        for secret in (user, password):
            if reply is None or reply.code != 334:
                return reply
            reply = await self.command(base64.b64encode(secret.encode()) + b"\r\n")
        return reply

    # --- one message -----------------------------------------------------------------------------
    async def send(self, mail: bytes, rcpts: list[bytes], body: bytes, reset: bool) -> Transaction:
        """One transaction. ``mail``/``rcpts`` are full command lines (with CRLF)."""
        self.messages += 1
        if "PIPELINING" in self.ext:
            tx = await self._send_pipelined(mail, rcpts, body, reset)
        else:
            tx = await self._send_lockstep(mail, rcpts, body, reset)
        tx.error = self.error
        # after a refused DATA/BDAT (all RCPTs failed) the server may still hold our MAIL
        self.needs_reset = tx.data is None or tx.data.code >= 400
        return tx

    async def _send_pipelined(self, mail: bytes, rcpts: list[bytes], body: bytes, reset: bool) -> Transaction:
        head = [b"RSET\r\n", mail] if reset else [mail]
        head += rcpts
        chunking = "CHUNKING" in self.ext
        if chunking:  # the whole transaction in one write (RFC 3030 §4.2)
            head.append(b"BDAT %d LAST\r\n" % len(body))
            futs = self._expect(len(head))
            self._write(b"".join(head), body)
        else:
            head.append(b"DATA\r\n")
            futs = self._expect(len(head))
            self._write(b"".join(head))
        replies = await self._collect(futs)
        if reset:
            replies = replies[1:]
        mail_r, rcpt_r, last = replies[0], replies[1 : 1 + len(rcpts)], replies[-1]
        if chunking:
            return Transaction(mail_r, rcpt_r, last)
        return await self._finish_data(mail_r, rcpt_r, last, body)

    async def _send_lockstep(self, mail: bytes, rcpts: list[bytes], body: bytes, reset: bool) -> Transaction:
        if reset:
            r = await self.command(b"RSET\r\n")
            if r is None:
                return Transaction(None, [None] * len(rcpts), None)
        mail_r = await self.command(mail)
        rcpt_r: list[Reply | None] = [None] * len(rcpts)
        if mail_r is None or mail_r.code >= 400:
            return Transaction(mail_r, rcpt_r, None)
        for i, line in enumerate(rcpts):
            rcpt_r[i] = r = await self.command(line)
            if r is None or r.code == 421:
                return Transaction(mail_r, rcpt_r, None)
        if not _any_ok(rcpt_r):
            return Transaction(mail_r, rcpt_r, None)
        if "CHUNKING" in self.ext:
            futs = self._expect(1)
            self._write(b"BDAT %d LAST\r\n" % len(body), body)
            return Transaction(mail_r, rcpt_r, (await self._collect(futs))[0])
        return await self._finish_data(mail_r, rcpt_r, await self.command(b"DATA\r\n"), body)

    async def _finish_data(self, mail_r: Reply | None, rcpt_r: list[Reply | None], data_r: Reply | None,
                           body: bytes) -> Transaction:  # fmt: skip
        if data_r is None or data_r.code != 354:
            return Transaction(mail_r, rcpt_r, data_r)  # DATA refused: the accepted rcpts get its reply
        if not _any_ok(rcpt_r):  # a server that says 354 with no recipient: end it empty
            await self.command(b".\r\n")
            return Transaction(mail_r, rcpt_r, None)
        futs = self._expect(1)
        self._write(encode_data(body))
        return Transaction(mail_r, rcpt_r, (await self._collect(futs))[0])

    async def quit(self, timeout: float = 2.0) -> None:
        """QUIT politely (short wait), let the server close first (RFC 5321 §4.1.1.10: it
        closes after its 221, and a receiver counting connections counts ours until then),
        then close."""
        if self._lost is None and self._transport is not None and not self._transport.is_closing():
            reply = await self.command(b"QUIT\r\n", timeout)
            if reply is not None and reply.code == 221:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._gone), timeout)
        if self._transport is not None:
            self._transport.close()


def _name(hostname: str) -> bytes:
    return hostname.encode("ascii") if hostname.isascii() else hostname.encode("idna")


def _any_ok(replies: list[Reply | None]) -> bool:
    return any(r is not None and r.code < 300 for r in replies)


def parse_ehlo(lines: list[bytes]) -> dict[str, str]:
    """EHLO reply lines (after the greeting line) → ``{"SIZE": "1000", "PIPELINING": "", …}``."""
    ext: dict[str, str] = {}
    for line in lines[1:]:
        word, _, params = line.decode("ascii", "replace").strip().partition(" ")
        if word:
            ext[word.upper()] = params.strip()
    return ext
