# SPDX-License-Identifier: MIT
"""protocol.py with a fake transport: one write per read, the commit wait, bounded backlog, bugs contained."""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fastmta.config import from_dict
from fastmta.smtp import replies as R
from fastmta.smtp.auth import Users
from fastmta.smtp.listener import ListenerSettings
from fastmta.smtp.policy import AuthFailures, ConnectionLimits, Policy
from fastmta.smtp.protocol import SmtpProtocol
from fastmta.smtp.session import Session, Transaction


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.paused = 0
        self.resumed = 0

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    abort = close

    def pause_reading(self) -> None:
        self.paused += 1

    def resume_reading(self) -> None:
        self.resumed += 1

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else None


class FakeStore:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: list[tuple[str, asyncio.Future[str], bytes]] = []

    def put(self, msg_id: str, txn: Transaction, head: bytes, body: bytes, done: Any) -> None:
        """The test settles the commit through the future it keeps."""
        fut: asyncio.Future[str] = self.loop.create_future()
        fut.add_done_callback(lambda f: done(f.exception()))
        self.pending.append((msg_id, fut, head + body))


class FakeHub:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.store = FakeStore(loop)
        self.limits = ConnectionLimits(10, 10)
        self.auth_failures = AuthFailures(3)
        self.connections: set[SmtpProtocol] = set()
        self.draining = False
        self.now = 0.0
        self.ids = 0
        self.auth_executor = None  # the loop's default executor

    def new_id(self) -> str:
        self.ids += 1
        return f"ID{self.ids}"

    def unhealthy(self) -> str | None:
        return None


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


# A STARTTLS listener whose user ``u`` may AUTH PLAIN with password ``p`` or 900 × ``p``.
STARTTLS = {
    "listener": [{"address": "127.0.0.1:25", "tls": "starttls"}],
    "tls": {"cert_file": "/unused.pem", "key_file": "/unused.key"},
}
USERS = Users({"u": lambda pw: pw in (b"p", b"p" * 900)})


def connect(
    loop: asyncio.AbstractEventLoop, tls: bool = False, hub: FakeHub | None = None
) -> tuple[SmtpProtocol, FakeTransport, FakeHub]:
    cfg = from_dict({"hostname": "mx.test", "metrics": {"address": ""}, **(STARTTLS if tls else {})})
    hub = hub or FakeHub(loop)
    users, ctx = (USERS, ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)) if tls else (Users(), None)
    settings = ListenerSettings(cfg, cfg.listeners[0], hub, Policy(cfg), users, ctx)  # type: ignore[arg-type]
    settings.pregreet_check = False
    proto = SmtpProtocol(hub, settings)  # type: ignore[arg-type]
    t = FakeTransport()
    proto.connection_made(t)
    assert t.writes.pop(0) == b"220 mx.test ESMTP fastmta\r\n"
    return proto, t, hub


def settle(loop: asyncio.AbstractEventLoop) -> None:
    loop.run_until_complete(asyncio.sleep(0))


def until(loop: asyncio.AbstractEventLoop, done: Callable[[], bool]) -> None:
    """Run the loop (tasks, executor threads) until ``done()``, for at most 5 s."""
    for _ in range(500):
        if done():
            return
        loop.run_until_complete(asyncio.sleep(0.01))
    raise AssertionError("timed out")


def test_one_write_per_read(loop: asyncio.AbstractEventLoop) -> None:
    proto, t, _ = connect(loop)
    proto.data_received(b"EHLO c.test\r\nNOOP\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRSET\r\n")
    assert len(t.writes) == 1
    assert t.writes[0].endswith(R.R_250_OK + R.R_250_SENDER_OK + R.R_250_RCPT_OK + R.R_250_RESET)


def test_commit_wait_keeps_order_without_epoll_changes(loop: asyncio.AbstractEventLoop) -> None:
    proto, t, hub = connect(loop)
    proto.data_received(b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
    t.writes.clear()
    proto.data_received(b"body\r\n.\r\nMAIL FROM:<a@x.test>\r\n")
    proto.data_received(b"RCPT TO:<c@y.test>\r\nDATA\r\nsecond\r\n.\r\nQUIT\r\n")  # arrives during the commit
    assert t.writes == [] and t.paused == 0
    ((msg_id, fut, data),) = hub.store.pending
    assert data.startswith(b"Received: ") and data.endswith(b"\r\nbody\r\n")
    fut.set_result(msg_id)
    settle(loop)
    assert b"".join(t.writes) == R.queued("ID1") + R.R_250_SENDER_OK + R.R_250_RCPT_OK + R.R_354_DATA
    t.writes.clear()
    msg2, fut2, data2 = hub.store.pending[1]
    assert data2.endswith(b"\r\nsecond\r\n")
    fut2.set_result(msg2)
    settle(loop)
    assert b"".join(t.writes) == R.queued("ID2") + R.R_221_BYE and t.closed


def test_backlog_past_its_bound_pauses_reading(loop: asyncio.AbstractEventLoop) -> None:
    proto, t, hub = connect(loop)
    proto.data_received(b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nx\r\n.\r\n")
    t.writes.clear()
    for _ in range(60):
        proto.data_received(b"NOOP\r\n" * 1000)
    assert t.paused == 1
    msg_id, fut, _ = hub.store.pending[0]
    fut.set_result(msg_id)
    settle(loop)
    assert t.resumed == 1
    assert b"".join(t.writes) == R.queued("ID1") + R.R_250_OK * 60_000


def test_commit_failure_is_452(loop: asyncio.AbstractEventLoop) -> None:
    from fastmta.errors import SpoolFullError

    proto, t, hub = connect(loop)
    proto.data_received(b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\nx\r\n.\r\n")
    t.writes.clear()
    hub.store.pending[0][1].set_exception(SpoolFullError())
    settle(loop)
    assert t.writes == [R.R_452_STORAGE]


def test_a_bug_closes_only_that_connection(loop: asyncio.AbstractEventLoop) -> None:
    proto, t, _ = connect(loop)

    class Buggy(Session):
        def line(self, line: bytes) -> None:
            raise RuntimeError("bug")

    assert proto.core is not None
    proto.session = proto.core.session = Buggy(proto.settings, "127.0.0.1")
    proto.data_received(b"NOOP\r\n")
    assert t.writes == [R.R_451_LOCAL_ERROR] and t.closed
    other, t2, _ = connect(loop)
    other.data_received(b"NOOP\r\n")
    assert t2.writes == [R.R_250_OK]


def test_drain_and_limits(loop: asyncio.AbstractEventLoop) -> None:
    proto, t, hub = connect(loop)
    proto.drain()
    assert t.writes == [R.R_421_SHUTDOWN] and t.closed
    proto.connection_lost(None)
    assert hub.limits.total == 0 and not hub.connections


class FakeSslObject:
    def version(self) -> str:
        return "TLSv1.3"

    def cipher(self) -> tuple[str, str, int]:
        return ("TLS_AES_128_GCM_SHA256", "TLSv1.3", 128)


class FakeTlsTransport(FakeTransport):
    def get_extra_info(self, name: str) -> Any:
        return FakeSslObject() if name == "ssl_object" else super().get_extra_info(name)


class TlsLoop:
    """The real loop, but ``start_tls`` is a handshake that hands over ``during``: bytes the
    client pipelined right behind its handshake (they come through the TLS layer)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, during: bytes) -> None:
        self.loop = loop
        self.during = during
        self.tls = FakeTlsTransport()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loop, name)

    async def start_tls(self, transport: Any, protocol: SmtpProtocol, *args: Any, **kwargs: Any) -> Any:
        protocol.data_received(self.during)
        return self.tls


def connect_tls(
    loop: asyncio.AbstractEventLoop, during: bytes
) -> tuple[SmtpProtocol, FakeTransport, TlsLoop]:
    """A connection to the STARTTLS listener; its handshake hands over ``during``."""
    hub = FakeHub(loop)
    tls_loop = hub.loop = TlsLoop(loop, during)  # type: ignore[assignment]
    proto, t, _ = connect(loop, tls=True, hub=hub)
    return proto, t, tls_loop


def test_plaintext_racing_pause_reading_never_runs_inside_tls(loop: asyncio.AbstractEventLoop) -> None:
    """RFC 3207 §5: a read the transport delivered after the STARTTLS line, before the
    handshake began (pause_reading lost the race), is plaintext and is dropped."""
    proto, t, tls_loop = connect_tls(loop, during=b"EHLO c.test\r\n")
    proto.data_received(b"EHLO c.test\r\nSTARTTLS\r\n")
    assert t.writes[-1].endswith(R.R_220_TLS_GO)
    proto.data_received(b"MAIL FROM:<injected@x.test>\r\n")  # raced pause_reading
    for _ in range(3):
        settle(loop)
    replies = b"".join(tls_loop.tls.writes)
    assert replies.startswith(b"250-mx.test") and b"AUTH PLAIN" in replies  # the TLS-side EHLO only
    assert b"2.1.0" not in replies and proto.session is not None and proto.session.txn is None


def _auth_plain(password: bytes) -> bytes:
    return b"AUTH PLAIN " + base64.b64encode(b"\0u\0" + password) + b"\r\n"


def test_long_auth_initial_response_where_auth_is_offered(loop: asyncio.AbstractEventLoop) -> None:
    """RFC 4954 §4: AUTH lines up to 12,288 octets, with max_line_length = 512 for the rest."""
    line = _auth_plain(b"p" * 900)
    assert 512 < len(line) < 12_288
    proto, t, tls_loop = connect_tls(loop, during=b"EHLO c.test\r\n" + line)
    assert proto.settings.max_line == 512 and proto.settings.parser_max_line == 12_288
    proto.data_received(b"EHLO c.test\r\nSTARTTLS\r\n")
    tls = tls_loop.tls
    until(loop, lambda: any(w[:1] in (b"2", b"5") and w[:4] != b"250-" for w in tls.writes))
    assert tls.writes[-1] == R.R_235_AUTH_OK
    tls.writes.clear()
    proto.data_received(b"NOOP " + b"x" * 600 + b"\r\n")  # other lines keep the 512 limit
    assert tls.writes == [R.R_500_LINE_TOO_LONG]
    tls.writes.clear()
    proto.data_received(b"AUTH PLAIN " + b"A" * 12_300 + b"\r\nNOOP\r\n")  # past RFC 4954's limit
    assert b"".join(tls.writes) == R.R_500_LINE_TOO_LONG + R.R_250_OK


def test_long_auth_line_without_tls_is_too_long(loop: asyncio.AbstractEventLoop) -> None:
    proto, t, _ = connect_tls(loop, during=b"")
    proto.data_received(b"EHLO c.test\r\n" + _auth_plain(b"p" * 900))
    assert t.writes[-1].endswith(b"\r\n" + R.R_500_LINE_TOO_LONG)  # AUTH is not offered before TLS


def test_auth_listener_without_tls_keeps_the_parser_limit(loop: asyncio.AbstractEventLoop) -> None:
    proto, _, _ = connect(loop)
    assert proto.settings.parser_max_line == proto.settings.max_line == 512
