# SPDX-License-Identifier: MIT
"""SMTP load generator: many connections on one uvloop, a few Python calls per reply.

Each connection is an ``asyncio.Protocol`` driven by the replies it reads (no
StreamReader, no coroutine per command), so the generator stays cheaper than the
server it measures; ``procs`` forks more loops when one core is not enough. Every
run is bounded by a message count and/or a duration. Works against any SMTP
server; it never stores what it sends.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import ctypes
import email.utils
import ipaddress
import multiprocessing
import os
import signal
import ssl
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastmta.parser import ParserError, ReplyParser, encode_data
from fastmta.smtp import proxy

DEFAULT_SENDER = "load@loadgen.fastmta.test"
DEFAULT_RECIPIENT = "sink@sink.fastmta.test"
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
# Upper bucket edges (ms) of the printed histogram: roughly 1-2-5 steps.
HIST_EDGES_MS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000)


@dataclass(frozen=True)
class LoadSpec:
    """What to send, where, and the bounds of the run (count and/or duration)."""

    host: str = "127.0.0.1"
    port: int = 2525
    connections: int = 1
    per_connection: int = 1
    count: int | None = 1000
    duration: float | None = None
    messages: tuple[bytes, ...] = ()  # DATA payloads, already dot-stuffed and ending in ".\r\n"
    sender: str = DEFAULT_SENDER
    recipients: tuple[str, ...] = (DEFAULT_RECIPIENT,)
    pipelining: bool = False
    starttls: bool = False
    tls: bool = False  # implicit TLS from the first byte (submissions port 465)
    auth: tuple[str, str] | None = None  # AUTH PLAIN user, password after EHLO (and TLS)
    proxy: str = ""  # "v1" | "v2": a HAProxy PROXY header first, for proxy_protocol listeners
    proxy_from: str = "127.0.0.1/32"  # the client addresses the headers claim, in turn
    rset: bool = False
    rate: float = 0.0  # messages/s over the whole run; 0 = as fast as the server answers
    helo: str = "loadgen.fastmta.test"
    timeout: float = 30.0  # longest silence of one connection before it is dropped


@dataclass
class Stats:
    """Outcome of a run; latencies in seconds, kept raw so percentiles are exact."""

    ok: int = 0
    failed: int = 0
    bytes_ok: int = 0
    connections: int = 0
    connect_failures: int = 0
    elapsed: float = 0.0
    cpu: float = 0.0  # the generator's own CPU seconds during the run (all its processes)
    connect: array[float] = field(default_factory=lambda: array("d"))  # TCP connect → banner
    data: array[float] = field(default_factory=lambda: array("d"))  # end of DATA sent → its reply
    txn: array[float] = field(default_factory=lambda: array("d"))  # MAIL sent → reply to end of DATA
    errors: Counter[str] = field(default_factory=Counter)  # reply code or failure kind → count

    def merge(self, other: Stats) -> None:
        self.ok += other.ok
        self.failed += other.failed
        self.bytes_ok += other.bytes_ok
        self.connections += other.connections
        self.connect_failures += other.connect_failures
        self.elapsed = max(self.elapsed, other.elapsed)
        self.cpu += other.cpu
        self.connect.extend(other.connect)
        self.data.extend(other.data)
        self.txn.extend(other.txn)
        self.errors.update(other.errors)

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    def summary(self, spec: LoadSpec | None = None) -> dict[str, Any]:
        """The JSON report: throughput, percentiles and histograms in ms, errors by code."""
        out: dict[str, Any] = {}
        if spec is not None:
            out["target"] = f"[{spec.host}]:{spec.port}" if ":" in spec.host else f"{spec.host}:{spec.port}"
            out["connections"] = spec.connections
            out["per_connection"] = spec.per_connection
            out["size"] = round(sum(map(len, spec.messages)) / max(1, len(spec.messages)))
            out["pipelining"] = spec.pipelining
            out["starttls"] = spec.starttls
            out["tls"] = spec.tls
            out["auth"] = spec.auth is not None
            out["proxy"] = spec.proxy or None
        out.update(
            ok=self.ok,
            failed=self.failed,
            sessions=self.connections,
            connect_failures=self.connect_failures,
            elapsed_s=round(self.elapsed, 4),
            cpu_s=round(self.cpu, 4),
            msgs_per_s=round(self.rate, 1),
            mb_per_s=round(self.bytes_ok / self.elapsed / 1e6, 3) if self.elapsed > 0 else 0.0,
            latency_ms={k: latency_summary(getattr(self, k)) for k in ("connect", "data", "txn")},
            histogram_ms={k: histogram(getattr(self, k)) for k in ("connect", "data", "txn")},
            errors=dict(sorted(self.errors.items())),
        )
        return out


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, int(-(-q * len(sorted_values) // 100)) - 1))
    return sorted_values[rank]


def latency_summary(values: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max/mean in milliseconds."""
    s = sorted(values)
    out = {f"p{q:g}": round(percentile(s, q) * 1e3, 3) for q in PERCENTILES}
    out["max"] = round(s[-1] * 1e3, 3) if s else 0.0
    out["mean"] = round(sum(s) / len(s) * 1e3, 3) if s else 0.0
    out["n"] = len(s)
    return out


def histogram(values: Sequence[float]) -> list[list[float]]:
    """[[upper edge ms, count], …] over HIST_EDGES_MS, plus [inf, count] for the rest."""
    counts = [0] * (len(HIST_EDGES_MS) + 1)
    edges = [e / 1e3 for e in HIST_EDGES_MS]
    for v in values:
        counts[bisect.bisect_left(edges, v)] += 1
    return [[e, c] for e, c in zip((*HIST_EDGES_MS, float("inf")), counts, strict=True) if c]


def make_message(size: int, sender: str = DEFAULT_SENDER, recipient: str = DEFAULT_RECIPIENT) -> bytes:
    """A plain RFC 5322 message of about ``size`` bytes (headers included), CRLF lines."""
    head = (
        f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: fastmta load test\r\n"
        f"Date: {email.utils.formatdate()}\r\nMessage-ID: {email.utils.make_msgid(domain='loadgen.test')}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog; fastmta load generator text.\r\n"
    body_len = max(0, size - len(head))
    body = (line * (body_len // len(line) + 1))[:body_len]
    if body and not body.endswith(b"\r\n"):
        body = body[:-2] + b"\r\n" if len(body) >= 2 else b"\r\n"
    return head + body


def load_corpus(directory: str | Path) -> list[bytes]:
    """Every ``*.eml`` under ``directory`` (sorted, so runs repeat), raw bytes."""
    files = sorted(Path(directory).rglob("*.eml"))
    if not files:
        raise ValueError(f"no .eml files under {directory}")
    return [f.read_bytes() for f in files]


def payloads(raw_messages: Sequence[bytes]) -> tuple[bytes, ...]:
    """Dot-stuffed DATA payloads (the parser's encoder), built once before the run."""
    return tuple(encode_data(m) for m in raw_messages)


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


def _child(spec: LoadSpec, conn: Any, shared: Any, index: int) -> None:
    import uvloop

    os.setpgid(0, 0)  # the terminal's Ctrl-C goes to the parent, which forwards it once
    _die_with_parent()

    def publish(stats: Stats) -> None:
        shared[2 * index] = stats.ok
        shared[2 * index + 1] = stats.failed

    try:
        stats = uvloop.run(run_async(spec, publish))
        conn.send(stats)
    finally:
        conn.close()


def _die_with_parent() -> None:
    """A worker must not outlive the parent that would read its report (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run(spec: LoadSpec, procs: int = 1, progress: Callable[[int, int, float], None] | None = None) -> Stats:
    """Run the load on uvloop, split over ``procs`` processes; merged statistics.

    ``progress(ok, failed, elapsed)`` is called about twice a second.
    """
    import uvloop

    procs = max(1, min(procs, spec.connections))
    start = time.perf_counter()
    if procs == 1:
        cb = (lambda s: progress(s.ok, s.failed, time.perf_counter() - start)) if progress else None
        return uvloop.run(run_async(spec, cb))
    ctx = multiprocessing.get_context("fork")
    shared = ctx.Array("q", 2 * procs, lock=False)
    children = []
    for i, part in enumerate(_split(spec, procs)):
        parent_end, child_end = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_child, args=(part, child_end, shared, i), daemon=True)
        p.start()
        child_end.close()
        children.append((p, parent_end))
    total = Stats()
    pending = list(children)

    # Workers sit in their own process groups; Ctrl-C reaches the parent only, which passes
    # each one on exactly once: the workers wind down (or, the second time, hang up) and report.
    def forward(signum: int, frame: object) -> None:
        for p, _ in children:
            if p.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGINT)

    previous = signal.signal(signal.SIGINT, forward)
    try:
        _collect(pending, total, shared, progress, start)
    finally:
        signal.signal(signal.SIGINT, previous)
    total.elapsed = time.perf_counter() - start
    return total


def _collect(pending: list[Any], total: Stats, shared: Any,
             progress: Callable[[int, int, float], None] | None, start: float) -> None:  # fmt: skip
    """Merge each worker's statistics as it finishes; publish progress meanwhile."""
    while pending:
        for item in list(pending):
            p, pipe = item
            if pipe.poll(0.5 / len(pending)):
                with contextlib.suppress(EOFError):
                    total.merge(pipe.recv())
                pipe.close()
                p.join()
                pending.remove(item)
            elif not p.is_alive() and not pipe.poll(0):
                total.errors["loadgen-worker-died"] += 1
                pending.remove(item)
        if progress:
            progress(sum(shared[0::2]), sum(shared[1::2]), time.perf_counter() - start)


def _split(spec: LoadSpec, procs: int) -> list[LoadSpec]:
    """Share connections, count and rate among processes (remainders to the first ones)."""
    from dataclasses import replace

    parts = []
    for i in range(procs):
        conns = spec.connections // procs + (i < spec.connections % procs)
        count = None if spec.count is None else spec.count // procs + (i < spec.count % procs)
        parts.append(replace(spec, connections=conns, count=count, rate=spec.rate / procs))
    return parts


def format_report(summary: dict[str, Any]) -> str:
    """The human-readable report of ``Stats.summary``."""
    lines = [
        f"target {summary.get('target', '?')}  connections {summary.get('connections')}"
        f"  msgs/conn {summary.get('per_connection')}  size {summary.get('size')} B"
        f"  pipelining {'on' if summary.get('pipelining') else 'off'}"
        f"  tls {'implicit' if summary.get('tls') else 'starttls' if summary.get('starttls') else 'off'}"
        f"{'  auth' if summary.get('auth') else ''}",
        f"accepted {summary['ok']}  failed {summary['failed']}  sessions {summary['sessions']}"
        f"  connect failures {summary['connect_failures']}  in {summary['elapsed_s']:.2f} s",
        f"throughput {summary['msgs_per_s']:.1f} msg/s  {summary['mb_per_s']:.2f} MB/s",
        "",
        f"{'latency (ms)':<24}{'p50':>9}{'p90':>9}{'p99':>9}{'p99.9':>9}{'max':>9}{'n':>9}",
    ]
    names = {"connect": "connect → banner", "data": "end of DATA → 250", "txn": "MAIL → 250 (transaction)"}
    for key, label in names.items():
        s = summary["latency_ms"][key]
        lines.append(
            f"{label:<24}{s['p50']:>9.2f}{s['p90']:>9.2f}{s['p99']:>9.2f}{s['p99.9']:>9.2f}"
            f"{s['max']:>9.2f}{s['n']:>9}"
        )
    hist = summary["histogram_ms"]["txn"]
    if hist:
        lines += ["", "transaction latency histogram"]
        top = max(c for _, c in hist)
        for edge, c in hist:
            label = f"<= {edge:g} ms" if edge != float("inf") else f"> {HIST_EDGES_MS[-1]:g} ms"
            lines.append(f"  {label:>12} {c:>9}  {'#' * max(1, round(40 * c / top))}")
    if summary["errors"]:
        lines += ["", "errors: " + ", ".join(f"{k} ×{v}" for k, v in summary["errors"].items())]
    return "\n".join(lines)


class Progress:
    """A progress line on stderr: rewritten in place on a tty, a plain line every 5 s otherwise."""

    def __init__(self, total: int | None, duration: float | None, stream: Any = None) -> None:
        self.total = total
        self.duration = duration
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.last_plain = 0.0

    def __call__(self, ok: int, failed: int, elapsed: float) -> None:
        if not self.tty and elapsed - self.last_plain < 5.0:
            return
        self.last_plain = elapsed
        done = ok + failed
        rate = ok / elapsed if elapsed > 0 else 0.0
        frac = None
        if self.total:
            frac = done / self.total
        if self.duration:
            frac = max(frac or 0.0, elapsed / self.duration)
        bar = ""
        if frac is not None:
            n = int(min(1.0, frac) * 30)
            bar = f"[{'#' * n}{'.' * (30 - n)}] {min(1.0, frac) * 100:5.1f}%  "
        text = f"{bar}{ok} ok  {failed} failed  {rate:,.0f} msg/s  {elapsed:.1f} s"
        self.stream.write(("\r" + text + "\x1b[K") if self.tty else text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))
