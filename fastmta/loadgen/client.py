# SPDX-License-Identifier: MIT
"""The connections of one loop: an ``asyncio.Protocol`` per connection, driven by the replies it reads.

No StreamReader and no coroutine per command, so the generator stays cheaper
than the server it measures. A shared budget bounds the run by count, duration
and rate.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import signal
import ssl
import time
from collections.abc import Callable

from fastmta.loadgen.spec import LoadSpec, make_message, payloads
from fastmta.loadgen.stats import Stats
from fastmta.parser import ParserError, ReplyParser
from fastmta.smtp import proxy


class _Budget:
    """Hands out message slots across all connections: count, duration and rate bounds."""

    def __init__(self, spec: LoadSpec, start: float) -> None:
        self.left = spec.count if spec.count is not None else -1
        self.deadline = start + spec.duration if spec.duration else float("inf")
        self.interval = 1.0 / spec.rate if spec.rate > 0 else 0.0
        self.next_at = start

    def take(self, now: float) -> float | None:
        """Delay before the next message may start (0 = now), or None when the run is over
        (no slot is handed out that would start at or past the deadline)."""
        if self.left == 0:
            return None
        at = max(self.next_at, now) if self.interval else now
        if at >= self.deadline:
            return None
        if self.left > 0:
            self.left -= 1
        self.next_at = at + self.interval
        return at - now


# Reply expectations, queued as commands are written and matched in order.
_BANNER, _EHLO, _HELO, _STARTTLS, _AUTH, _MAIL, _RCPT, _DATA, _BODY, _RSET, _PRE_RSET, _QUIT = range(12)
_IN_TXN = frozenset((_MAIL, _RCPT, _DATA, _BODY))


class _Client(asyncio.Protocol):
    """One SMTP connection: sends transactions while the budget lasts, then QUIT."""

    def __init__(self, run: _Run, t_connect: float) -> None:
        self.run = run
        self.spec = run.spec
        self.stats = run.stats
        self.parser = ReplyParser()
        self.expect: list[int] = []
        self.t_connect = t_connect
        self.last_io = t_connect
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] = run.loop.create_future()
        self.sent = 0  # messages begun on this connection
        self.reserved = True  # the slot took this connection's first message from the budget
        self.tls = run.spec.tls
        self.authed = False
        self.pipelining = False
        self.rcpt_ok = 0
        self.rcpt_next = 0
        self.error: str | None = None  # first failure of the current transaction
        self.t_mail = 0.0
        self.t_body = 0.0
        self.payload = b""

    def factory(self) -> Callable[[], _Client]:
        """``create_connection`` wants a factory; this connection is already built."""
        return lambda: self

    # -- transport callbacks -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.expect.append(_BANNER)
        self.run.active.add(self)
        if self.spec.proxy:
            self._write(self.run.proxy_header(transport))

    def connection_lost(self, exc: Exception | None) -> None:
        self.run.active.discard(self)
        self.transport = None
        if self.reserved:
            self.reserved = False
            self.stats.failed += 1  # the session ended before its first message began
        if any(x in _IN_TXN for x in self.expect):
            self._fail("dropped")  # hung up in the middle of a transaction
        elif self.expect and self.expect[0] == _BANNER:
            self.stats.errors["dropped-before-banner"] += 1
        if not self.done.done():
            self.done.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.last_io = time.perf_counter()
        try:
            replies = self.parser.feed(data)
        except ParserError:
            self.stats.errors["bad-reply"] += 1
            self._abort()
            return
        for code, lines in replies:
            if not self.expect:
                self.stats.errors["unexpected-reply"] += 1
                self._abort()
                return
            self._on_reply(self.expect.pop(0), code, lines)
            if self.transport is None:
                return

    # -- the dialogue --------------------------------------------------------
    def _on_reply(self, what: int, code: int, lines: list[bytes]) -> None:
        if code == 421 and what != _QUIT:
            self.stats.errors["banner:421" if what == _BANNER else "421"] += 1
            if what in (_MAIL, _RCPT, _DATA, _BODY) and self.error is None:
                self.error = "421"
                self.stats.failed += 1
            self._abort()
            return
        if what == _BODY:
            now = self.last_io
            if code == 250 and self.error is None:
                self.stats.ok += 1
                self.stats.bytes_ok += len(self.payload)
                self.stats.data.append(now - self.t_body)
                self.stats.txn.append(now - self.t_mail)
            else:
                self._fail(str(code))
            self._next()
        elif what == _RCPT:
            if code // 100 == 2:
                self.rcpt_ok += 1
            elif self.error is None:
                self.stats.errors[f"rcpt:{code}"] += 1
            if not self.pipelining:
                self._send_rcpt_or_data()
        elif what == _MAIL:
            if code // 100 != 2:
                self._fail(str(code))
                if not self.pipelining:
                    self._reset_then_next()
            elif not self.pipelining:
                self._send_rcpt_or_data()
        elif what == _DATA:
            if code == 354:
                self.t_body = time.perf_counter()
                self.expect.append(_BODY)
                self._write(self.payload)
            else:
                self._fail(str(code) if self.rcpt_ok or self.error else "no-rcpt")
                self._reset_then_next()
        elif what == _RSET:
            self._next()
        elif what == _PRE_RSET:
            if not self.pipelining:
                self._send_mail()
        elif what == _BANNER:
            if code != 220:
                self.stats.errors[f"banner:{code}"] += 1
                self._abort()
                return
            self.stats.connect.append(self.last_io - self.t_connect)
            self._command(b"EHLO " + self.spec.helo.encode() + b"\r\n", _EHLO)
        elif what in (_EHLO, _HELO):
            if code != 250:
                if what == _EHLO:
                    self._command(b"HELO " + self.spec.helo.encode() + b"\r\n", _HELO)
                else:
                    self.stats.errors[f"helo:{code}"] += 1
                    self._quit()
                return
            caps = {ln.split(b" ", 1)[0].upper() for ln in lines[1:]}
            if self.spec.starttls and not self.tls:
                if b"STARTTLS" not in caps:
                    self.stats.errors["no-starttls"] += 1
                    self._quit()
                    return
                self._command(b"STARTTLS\r\n", _STARTTLS)
                return
            self.pipelining = self.spec.pipelining and b"PIPELINING" in caps
            if self.spec.auth and not self.authed:
                self._command(self.run.auth_line, _AUTH)
                return
            self._next()
        elif what == _AUTH:
            if code != 235:
                self.stats.errors[f"auth:{code}"] += 1
                self._quit()
                return
            self.authed = True
            self._next()
        elif what == _STARTTLS:
            if code != 220:
                self.stats.errors[f"starttls:{code}"] += 1
                self._quit()
                return
            self.run.loop.create_task(self._upgrade())
        elif what == _QUIT:
            self._close()

    async def _upgrade(self) -> None:
        assert self.transport is not None and self.run.tls_context is not None
        try:
            transport = await self.run.loop.start_tls(
                self.transport, self, self.run.tls_context, server_hostname=self.spec.host
            )
        except (OSError, ssl.SSLError, ConnectionError) as e:
            self.stats.errors[f"tls:{type(e).__name__}"] += 1
            self._abort()
            return
        if transport is None:
            return
        self.transport = transport
        self.tls = True
        self.parser = ReplyParser()
        self._command(b"EHLO " + self.spec.helo.encode() + b"\r\n", _EHLO)

    def _next(self) -> None:
        """Start the next transaction on this connection, or say QUIT."""
        if self.sent >= self.spec.per_connection:
            self._quit()
            return
        if self.reserved:
            self.reserved = False
            self._begin()
            return
        delay = self.run.budget.take(time.perf_counter())
        if delay is None:
            self._quit()
        elif delay > 0:
            self.run.loop.call_later(delay, self._begin)
        else:
            self._begin()

    def _begin(self) -> None:
        if self.transport is None:
            self.stats.failed += 1  # its slot was taken while the server hung up
            self.stats.errors["dropped"] += 1
            return
        run = self.run
        self.sent += 1
        self.error = None
        self.rcpt_ok = 0
        self.rcpt_next = 0
        self.last_io = time.perf_counter()
        self.payload = run.payloads[run.next_payload % len(run.payloads)]
        run.next_payload += 1
        reset = self.spec.rset and self.sent > 1
        if self.pipelining:
            # RFC 2920: MAIL, RCPT… and DATA go in one write; the body waits for 354.
            self.t_mail = self.last_io
            if reset:
                self.expect.append(_PRE_RSET)
            self.expect.append(_MAIL)
            self.expect.extend([_RCPT] * len(run.rcpt_lines))
            self.expect.append(_DATA)
            self._write((b"RSET\r\n" if reset else b"") + run.mail_line + run.rcpt_block + b"DATA\r\n")
        elif reset:
            self._command(b"RSET\r\n", _PRE_RSET)
        else:
            self._send_mail()

    def _send_mail(self) -> None:
        self.t_mail = time.perf_counter()
        self._command(self.run.mail_line, _MAIL)

    def _send_rcpt_or_data(self) -> None:
        lines = self.run.rcpt_lines
        if self.rcpt_next < len(lines):
            self.expect.append(_RCPT)
            self._write(lines[self.rcpt_next])
            self.rcpt_next += 1
        elif self.rcpt_ok and self.error is None:
            self._command(b"DATA\r\n", _DATA)
        else:
            if self.error is None:
                self._fail("no-rcpt")
            self._reset_then_next()

    def _fail(self, why: str) -> None:
        if self.error is None:
            self.error = why
            self.stats.failed += 1
            self.stats.errors[why] += 1

    def _reset_then_next(self) -> None:
        if self.pipelining and self.expect:
            return  # replies to the rest of the pipelined group are still coming
        self._command(b"RSET\r\n", _RSET)

    def _command(self, line: bytes, what: int) -> None:
        self.expect.append(what)
        self._write(line)

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _quit(self) -> None:
        self._command(b"QUIT\r\n", _QUIT)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
            self.transport = None


class _Run:
    """State shared by the connections of one loop."""

    def __init__(self, spec: LoadSpec, loop: asyncio.AbstractEventLoop) -> None:
        self.spec = spec
        self.loop = loop
        self.stats = Stats()
        self.payloads = spec.messages or payloads([make_message(4096, spec.sender, spec.recipients[0])])
        self.next_payload = 0
        self.mail_line = f"MAIL FROM:<{spec.sender}>\r\n".encode()
        self.rcpt_lines = [f"RCPT TO:<{r}>\r\n".encode() for r in spec.recipients]
        self.rcpt_block = b"".join(self.rcpt_lines)
        self.active: set[_Client] = set()
        self.budget = _Budget(spec, time.perf_counter())
        self.proxy_net = ipaddress.ip_network(spec.proxy_from, strict=False)
        self.proxy_next = 0
        self.auth_line = b""
        if spec.auth:
            secret = b"\0" + spec.auth[0].encode() + b"\0" + spec.auth[1].encode()
            self.auth_line = b"AUTH PLAIN " + base64.b64encode(secret) + b"\r\n"
        self.tls_context: ssl.SSLContext | None = None
        if spec.starttls or spec.tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            self.tls_context = ctx

    def proxy_header(self, transport: asyncio.BaseTransport) -> bytes:
        """The PROXY header of the next connection: source addresses taken from ``proxy_from`` in turn."""
        net = self.proxy_net
        usable = net.num_addresses - 2 if net.num_addresses > 2 else net.num_addresses
        first = net.network_address + (1 if net.num_addresses > 2 else 0)
        src = str(first + self.proxy_next % usable)
        self.proxy_next += 1
        dst, dport = transport.get_extra_info("peername")[:2]
        sport = 1024 + self.proxy_next % 64000
        if self.spec.proxy == "v1":
            return proxy.v1_header(src, dst, sport, dport)
        return proxy.v2_header(src, dst, sport, dport)

    async def slot(self) -> None:
        """One connection slot: reconnect until the budget is spent.

        The first message of a connection is taken from the budget before connecting,
        so the run never opens a session it has nothing to send on.
        """
        spec = self.spec
        while (delay := self.budget.take(time.perf_counter())) is not None:
            if delay > 0:
                await asyncio.sleep(delay)
            client = _Client(self, time.perf_counter())
            try:
                await asyncio.wait_for(
                    self.loop.create_connection(
                        client.factory(),
                        spec.host,
                        spec.port,
                        ssl=self.tls_context if spec.tls else None,
                        server_hostname=spec.host if spec.tls else None,
                    ),
                    spec.timeout,
                )
            except (TimeoutError, OSError) as e:
                # The reserved message could not even be offered: it failed, and a dead
                # server ends a count-bounded run instead of spinning.
                self.stats.failed += 1
                self.stats.connect_failures += 1
                self.stats.errors[f"connect:{type(e).__name__}"] += 1
                await asyncio.sleep(0.01)
                continue
            self.stats.connections += 1
            await client.done

    def stop(self) -> None:
        """Ctrl-C: begin no new message, let those in flight finish; a second one drops every connection."""
        if self.budget.left == 0:
            for client in list(self.active):
                client._abort()
        self.budget.left = 0

    async def watchdog(self) -> None:
        """Drop connections silent for longer than ``timeout`` (one timer for all)."""
        while True:
            await asyncio.sleep(min(1.0, self.spec.timeout / 4))
            limit = time.perf_counter() - self.spec.timeout
            for client in list(self.active):
                if client.last_io < limit:
                    if any(x in _IN_TXN for x in client.expect) and client.error is None:
                        client._fail("timeout")  # counts the error too
                    else:
                        self.stats.errors["timeout"] += 1
                    client.expect.clear()
                    client._abort()
                    if not client.done.done():
                        client.done.set_result(None)


async def run_async(spec: LoadSpec, progress: Callable[[Stats], None] | None = None) -> Stats:
    """Run the load on the current loop and return its statistics."""
    loop = asyncio.get_running_loop()
    run = _Run(spec, loop)
    start, cpu0 = time.perf_counter(), time.process_time()
    watchdog = loop.create_task(run.watchdog())
    ticker = loop.create_task(_tick(run.stats, progress)) if progress else None
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # main thread only
        loop.add_signal_handler(signal.SIGINT, run.stop)
    try:
        await asyncio.gather(*(run.slot() for _ in range(spec.connections)))
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGINT)
        run.stats.elapsed = time.perf_counter() - start
        run.stats.cpu = time.process_time() - cpu0
        for task in (watchdog, ticker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    return run.stats


async def _tick(stats: Stats, progress: Callable[[Stats], None]) -> None:
    while True:
        await asyncio.sleep(0.5)
        progress(stats)
