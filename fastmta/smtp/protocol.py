# SPDX-License-Identifier: MIT
"""asyncio.Protocol shell around the protocol core: connections, waits, timeouts.

The hot path is one call per read into the core (``core.py``: parser → session →
one batched ``transport.write``, compiled in ``_core.pyx``). This shell carries
out what the core hands back: the spool commit (a plain callback: no future, no task),
the AUTH check and the TLS handshake. While one is pending the core holds the
events already parsed and newly arrived bytes wait unparsed (reading pauses only
past a bound), so PIPELINING keeps its order and memory stays bounded. After
STARTTLS the parser drops buffered plaintext (``discard``), so no command sent
before the handshake is ever run inside TLS. Implicit TLS is the same handshake,
run at connect time after admission, so both are counted, logged and timed alike.

Every way a connection ends (close, reset, timeout, a failed or abandoned TLS
handshake, shutdown) goes through ``_release``, which gives the connection's
slots back exactly once: a TLS layer that never reports its end to us must not
keep a client's per-IP share forever.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import logging
import ssl
import termios
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from fastmta.errors import SmtpError
from fastmta.parser import CommandParser
from fastmta.smtp import proxy
from fastmta.smtp import replies as R
from fastmta.smtp.core import Core
from fastmta.smtp.session import A_AUTH, A_CLOSE, A_COMMIT, A_STARTTLS, S_BDAT, S_DATA, Session, Transaction

if TYPE_CHECKING:
    from fastmta.smtp.listener import Hub, ListenerSettings

log = logging.getLogger("fastmta.smtp")

_EARLY_LIMIT = 256 * 1024  # bytes taken in while a commit or AUTH check is pending
CommitDone = Callable[[BaseException | None], None]  # called once a message is stored, or could not be


class Store(Protocol):
    """Where accepted messages go (the composition root, node/server.py, adapts the spool to this)."""

    def put(self, msg_id: str, txn: Transaction, head: bytes, body: bytes, done: CommitDone) -> None:
        """Store ``head + body`` (the Received: line, then the message as received); then
        ``done(None)``, or ``done(error)`` if it could not be stored, on the loop. May raise."""


def _bytes_waiting(transport: Any) -> int:
    """Octets already queued on the socket (FIONREAD): one ioctl, about a microsecond."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    buf = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, buf)
    except OSError:
        return 0
    return buf[0]


def tls_description(ssl_object: Any) -> str:
    """``"TLSv1.3 TLS_AES_256_GCM_SHA384"`` for the Received: header and the session."""
    if ssl_object is None:
        return ""
    cipher = ssl_object.cipher()
    return f"{ssl_object.version()} {cipher[0] if cipher else 'unknown'}"


class SmtpProtocol(asyncio.Protocol):
    """One inbound connection."""

    __slots__ = ("hub", "settings", "transport", "core", "parser", "session", "peer", "last_active",
                 "_line_start", "_started", "_early", "_waiting", "_paused_write",
                 "_paused_early", "_admitted", "_closed", "_proxy", "_msg_id", "_msg_size")  # fmt: skip

    def __init__(self, hub: Hub, settings: ListenerSettings) -> None:
        self.hub = hub
        self.settings = settings
        self.transport: Any = None
        self.core: Core | None = None  # parser + session, from the admitted client's banner on
        self.parser: Any = None
        self.session: Session | None = None
        self.peer = ""
        self.last_active = 0.0  # the last read (the idle timers run from here)
        self._line_start = 0.0  # the read that began the unfinished command line, if any
        self._started = 0.0  # connect time (max_session_time)
        self._early = bytearray()  # implicit TLS: bytes read before the handshake began
        self._waiting = False  # a commit, AUTH check or TLS handshake is pending
        self._paused_write = False  # the peer does not read its replies
        self._paused_early = False  # too many bytes arrived during a wait
        self._admitted = False
        self._closed = False
        self._proxy: bytes | None = None  # PROXY header bytes so far, while waiting for it
        self._msg_id = ""  # the message being committed
        self._msg_size = 0

    # --- connection life ----------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else "unknown"
        self.settings.metrics.connections.inc()
        self._started = self.last_active = self.hub.now
        self.hub.connections.add(self)
        if self.settings.proxy_protocol:
            # The balancer speaks first: admission and the banner wait for the real client address.
            self._proxy = b""
            return
        if not self._admit():
            return
        if self.settings.implicit_tls:
            # Admitted first, so the limits also guard the costly part: the handshake.
            self._waiting = True
            transport.pause_reading()  # the ClientHello is for the TLS layer
            self.hub.loop.create_task(self._start_tls())
            return
        self._open("")

    def _admit(self) -> bool:
        """Take this client's connection slots (per IP and global), or refuse it with 421."""
        transport = self.transport
        settings = self.settings
        hub = self.hub
        if hub.draining:
            transport.write(R.R_421_SHUTDOWN)
            self._close_now()
            return False
        refused = hub.limits.admit(self.peer)
        if refused is not None:
            settings.rejected("connection_limit")
            transport.write(R.R_421_IP_LIMIT if refused == "per_ip" else R.R_421_BUSY)
            self._close_now()
            return False
        self._admitted = True
        settings.metrics.active.inc()
        return True

    def _open(self, tls: str) -> None:
        """Start the admitted client's session and send the banner."""
        transport = self.transport
        settings = self.settings
        self.parser = CommandParser(settings.parser_max_line, settings.max_size, settings.bare_lf)
        self.session = Session(settings, self.peer, tls)
        self.core = Core(self.session, self.parser, transport.write)
        self.last_active = self.hub.now
        if settings.pregreet_check:
            early = _bytes_waiting(transport)
            if early:  # sent before we even accepted: a legitimate client waits for the 220
                settings.rejected("pregreet")
                log.warning(
                    "client %s talked before the banner (%d bytes waiting at accept)", self.peer, early
                )
        transport.write(settings.banner)

    def _proxy_header(self, data: bytes) -> None:
        buf = self._proxy + data  # type: ignore[operator]
        try:
            parsed = proxy.parse(buf)
            if parsed is None and len(buf) > proxy.V2_MAX:
                raise proxy.ProxyError("header too long")
        except proxy.ProxyError as e:
            log.info("bad PROXY header from %s: %s", self.peer, e)
            self.settings.rejected("proxy_header")
            self._close_now()
            return
        if parsed is None:
            self._proxy = buf
            return
        used, client = parsed
        self._proxy = None
        if client:
            self.peer = client
        if not self._admit():
            return
        self._open("")
        if len(buf) > used:
            self.data_received(buf[used:])

    def _close_now(self) -> None:
        """Close without a word more; the slots are given back when the transport is gone."""
        self._closed = True
        self.last_active = self.hub.now
        self.transport.close()

    def _release(self) -> None:
        """The connection is over: give its slots back. Idempotent; every end comes here."""
        self._closed = True
        self.hub.connections.discard(self)
        if not self._admitted:
            return
        self._admitted = False
        self.hub.limits.release(self.peer)
        self.settings.metrics.active.dec()
        self.parser = None
        self.core = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()

    def pause_writing(self) -> None:
        # The peer does not read its replies: stop reading its commands (bounded memory).
        self._paused_write = True
        if not self._closed:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused_write = False
        if not self._paused_early and not self._closed:
            self.transport.resume_reading()

    # --- the hot path -----------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        core = self.core
        if core is None or self._closed:
            if self._closed:
                return
            if self._proxy is not None:
                self._proxy_header(data)
            elif len(self._early) + len(data) <= _EARLY_LIMIT:
                self._early += data  # implicit TLS: the ClientHello, read before the handshake began
            else:
                self.abort()
            return
        now = self.last_active = self.hub.now
        if core.waiting:
            # Not parsed yet: the held events may end at a DATA barrier the session has
            # not seen, and parsing on would read a body as commands. Reading goes on
            # (no epoll change per message) until the backlog passes its bound.
            if core.hold(data) > _EARLY_LIMIT and not self._paused_early:
                self._paused_early = True
                self.transport.pause_reading()
            return
        try:
            act = core.feed(data)
        except Exception:
            self._internal_error()
            return
        if act is not None:
            self._act(act)
        # A command line is timed from its first octet, not its last (slowloris): note
        # the read that began the unfinished line, if any. One check per read, no timer.
        if core.line_started:
            self._line_start = now

    def _internal_error(self) -> None:
        """A bug, not bad input: log it, tell the client 451 and close this connection only."""
        log.exception("internal error in a session with %s", self.peer)
        if not self._closed:
            self.transport.write(R.R_451_LOCAL_ERROR)
            self._close_now()

    def _act(self, act: tuple[Any, ...]) -> None:
        """Carry out what the core handed back (its replies are written already)."""
        a = act[0]
        if a == A_COMMIT:
            self._waiting = True
            self._commit(act[1], act[2], act[3], act[4])
        elif a == A_AUTH:
            self._waiting = True
            self.hub.loop.create_task(self._check_auth(act[1], act[2]))
        elif a == A_STARTTLS:
            self._waiting = True
            self.transport.pause_reading()  # the handshake bytes are for the TLS layer
            self.hub.loop.create_task(self._start_tls())
        elif a == A_CLOSE:
            self._close_now()

    def _flush(self) -> None:
        self.core.flush()  # type: ignore[union-attr]

    def _resume(self) -> None:
        """The wait is over: handle the held events, then read again."""
        self._waiting = False
        if self._closed:
            return
        self._line_start = self.last_active = self.hub.now
        try:
            act = self.core.resume()  # type: ignore[union-attr]
            if act is not None:
                self._act(act)
        except Exception:
            self._internal_error()
            return
        if self._paused_early and not self._waiting and not self._closed:
            self._paused_early = False
            if not self._paused_write:
                self.transport.resume_reading()

    def _close(self) -> None:
        self._flush()
        self._close_now()

    # --- waits -------------------------------------------------------------------------
    def _commit(self, msg_id: str, txn: Transaction, head: bytes, body: bytes) -> None:
        self._msg_id = msg_id
        self._msg_size = len(head) + len(body)
        try:
            self.hub.store.put(msg_id, txn, head, body, self._committed)
        except Exception as e:
            self._committed(e)

    def _committed(self, exc: BaseException | None) -> None:
        session = self.session
        assert session is not None
        if exc is None:
            session.commit_done(self._msg_id)
            metrics = self.settings.metrics
            metrics.received.inc()
            metrics.received_bytes.inc(self._msg_size)
        else:
            self._commit_failed(exc)
        self._resume()

    def _commit_failed(self, exc: BaseException) -> None:
        if not isinstance(exc, SmtpError):
            log.error("spool commit failed: %r", exc)
        assert self.session is not None
        self.session.commit_failed(exc)

    async def _check_auth(self, user: str, password: str) -> None:
        hub = self.hub
        settings = self.settings
        try:
            ok = await hub.loop.run_in_executor(hub.auth_executor, settings.users.check, user, password)
        except Exception:
            log.exception("AUTH check failed")
            ok = False
        if ok:
            hub.auth_failures.succeeded(self.peer)
            settings.metrics.auth_ok.inc()
        else:
            hub.auth_failures.failed(self.peer)
            settings.metrics.auth_failed.inc()
            log.warning("AUTH failed for %s from %s", user[:64].encode("unicode_escape").decode(), self.peer)
            await asyncio.sleep(settings.auth_failure_delay)
        if self._closed:
            return
        act = self.session.auth_done(ok, user)  # type: ignore[union-attr]
        if act is not None and act[0] == A_CLOSE:
            self._close()
            return
        self._flush()
        self._resume()

    async def _start_tls(self) -> None:
        """The TLS handshake: after STARTTLS, or at connect on an implicit-TLS listener."""
        settings = self.settings
        ctx: ssl.SSLContext | None = settings.ssl_context
        assert ctx is not None
        kind = "STARTTLS" if self.session is not None else "TLS"
        if self.session is None and self._early:
            # Implicit TLS: the transport reads from connect on, so the ClientHello may
            # already be here. Handed to the TLS layer right after start_tls() installs
            # it (and has paused reading), before the handshake looks for it.
            self.hub.loop.call_soon(self._to_tls_layer, bytes(self._early))
        # Bytes read since the STARTTLS line (a read that raced pause_reading) are
        # plaintext: none of it may run as a command inside TLS (RFC 3207 §5). What
        # arrives from here on comes through the TLS layer.
        self._early.clear()
        if self.core is not None:
            self.core.drop_early()
        try:
            transport = await self.hub.loop.start_tls(
                self.transport, self, ctx, server_side=True, ssl_handshake_timeout=settings.command_timeout
            )
            if transport is None:
                raise ConnectionResetError("connection lost during the handshake")
        except Exception as e:  # a failed handshake of any kind ends this connection only
            settings.metrics.tls_failed.inc()
            # Some failures (a reset, a timeout) carry no message: the class names them.
            log.info("%s handshake with %s failed: %s", kind, self.peer, str(e) or type(e).__name__)
            # The TLS layer took the socket over and never reports its end to this
            # protocol: abort it and give the slots back here, or they are lost.
            self.transport.abort()
            self._release()
            return
        settings.metrics.tls_ok.inc()
        self.transport = transport
        if self.core is not None:
            self.core.write = transport.write
        self._paused_write = self._paused_early = False
        tls = tls_description(transport.get_extra_info("ssl_object"))
        if self._closed:  # shut down while the handshake ran
            transport.abort()
            self._release()
        elif self.session is None:  # implicit TLS: the session starts now
            self._waiting = False
            self._open(tls)
            if self.hub.draining:
                self.drain()
        else:
            self.session.tls_started(tls)
            if self.parser is not None:
                self.parser.discard()  # defence in depth, as at the STARTTLS line
            self._resume()

    def _to_tls_layer(self, data: bytes) -> None:
        """Give bytes read before the handshake to the TLS layer (a BufferedProtocol)."""
        if self._closed:
            return
        layer = self.transport.get_protocol()
        view = memoryview(data)
        while view:
            buf = layer.get_buffer(len(view))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            layer.buffer_updated(n)
            view = view[n:]

    # --- called by the hub -------------------------------------------------------------
    def check_timeout(self, now: float) -> None:
        settings = self.settings
        if self._closed:
            # Closing, but the peer does not read what is left to send: no close
            # may hold the slots forever.
            if now - self.last_active > settings.command_timeout:
                self.transport.abort()
                self._release()
            return
        if self._proxy is not None:
            if now - self.last_active > settings.command_timeout:
                self._close_now()
            return
        session = self.session
        if self._waiting or session is None:
            return  # a handshake has its own timeout; a commit or AUTH check ends by itself
        if self.parser.partial:
            why = "command line unfinished" if now - self._line_start > settings.command_timeout else ""
        elif session.state in (S_DATA, S_BDAT):
            why = "idle in the message data" if now - self.last_active > settings.data_timeout else ""
        else:
            why = "idle" if now - self.last_active > settings.command_timeout else ""
        if not why and now - self._started > settings.max_session_time:
            why = "session too long"
        if why:
            log.info("closing the session with %s: %s", self.peer, why)
            session.timeout()
            self._close()

    def drain(self) -> None:
        """Shutdown: an idle session is told 421 now; a busy one after its transaction."""
        session = self.session
        if self._proxy is not None and not self._closed:
            self._close_now()  # no client behind this balancer connection yet
            return
        if session is None or self._closed:
            return  # an implicit-TLS handshake still running drains when it ends
        session.draining = True
        if not self._waiting and not session.in_transaction:
            session.out.append(R.R_421_SHUTDOWN)
            self._close()

    def abort(self) -> None:
        """Shutdown past its grace period: drop the connection whatever it is doing."""
        if self.transport is not None:
            self.transport.abort()
        self._release()
