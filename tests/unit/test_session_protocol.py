# SPDX-License-Identifier: MIT
"""protocol.py with a fake transport: one write per read, the commit wait, bounded backlog, bugs contained."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from fastmta.config import from_dict
from fastmta.policy import AuthFailures, ConnectionLimits, Policy
from fastmta.smtp import replies as R
from fastmta.smtp.auth import Users
from fastmta.smtp.listener import ListenerSettings
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

    def put(self, msg_id: str, txn: Transaction, data: bytes) -> asyncio.Future[str]:
        fut: asyncio.Future[str] = self.loop.create_future()
        self.pending.append((msg_id, fut, data))
        return fut


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


def connect(loop: asyncio.AbstractEventLoop) -> tuple[SmtpProtocol, FakeTransport, FakeHub]:
    cfg = from_dict({"hostname": "mx.test", "metrics": {"address": ""}})
    hub = FakeHub(loop)
    settings = ListenerSettings(cfg, cfg.listeners[0], hub, Policy(cfg), Users(), None)  # type: ignore[arg-type]
    settings.pregreet_check = False
    proto = SmtpProtocol(hub, settings)  # type: ignore[arg-type]
    t = FakeTransport()
    proto.connection_made(t)
    assert t.writes.pop(0) == b"220 mx.test ESMTP fastmta\r\n"
    return proto, t, hub


def settle(loop: asyncio.AbstractEventLoop) -> None:
    loop.run_until_complete(asyncio.sleep(0))


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

    proto.session = Buggy(proto.settings, "127.0.0.1")
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
