# SPDX-License-Identifier: MIT
"""The signing process and the loop's end of it: flat binary replies, one frame per batch,
one future per message, a retry answered without a round trip (keys: tests/fixtures/dkim.py)."""

from __future__ import annotations

import asyncio
import socket

import uvloop

from fastmta.config import DkimConfig
from fastmta.dkim import service, worker
from tests.fixtures.dkim import DOMAIN, ED, RSA, Keys
from tests.support import recv_exactly

T = 1_790_000_000


def _message(sender: str, n: int) -> bytes:
    return f"From: <{sender}>\r\nTo: bob@dest.test\r\nSubject: {n}\r\n\r\nbody {n}  \r\n".encode()


def _configs(keys: Keys) -> list[DkimConfig]:
    return [DkimConfig(domain=DOMAIN, selector=s, key_file=str(keys.path(s))) for s in (RSA, ED)]


def _frame(sock: socket.socket) -> bytes:
    (n,) = worker.FRAME.unpack(recv_exactly(sock, worker.FRAME.size, "the signing process"))
    return recv_exactly(sock, n, "the signing process")


def _replies(sock: socket.socket, count: int) -> list[list[worker.Reply]]:
    """Frames read until ``count`` replies have come, each frame's replies as one list."""
    frames: list[list[worker.Reply]] = []
    while sum(map(len, frames)) < count:
        seconds, replies = worker.decode_batch(_frame(sock))
        assert seconds > 0 and replies
        frames.append(replies)
    return frames


def test_requests_written_together_get_flat_binary_replies(dkim_keys: Keys) -> None:
    ours, theirs = socket.socketpair()
    proc = service.spawn(_configs(dkim_keys), theirs)
    theirs.close()
    try:
        ours.settimeout(30)
        assert worker.decode_ready(_frame(ours)) == [("rsa", DOMAIN), ("ed25519", DOMAIN)]
        senders = [f"a@{DOMAIN}", "a@other.test", f"a@news.{DOMAIN}"]
        msgs = [_message(s, i) for i, s in enumerate(senders)]
        ours.sendall(b"".join(worker.REQ.pack(len(m), 10 + i, T) + m for i, m in enumerate(msgs)))
        replies = [r for frame in _replies(ours, 3) for r in frame]
        assert [(seq, codes) for seq, _, codes in replies] == [
            (10, [(0, 0), (1, 0)]),  # both entries signed
            (11, []),  # no entry covers other.test
            (12, [(0, 0), (1, 0)]),
        ]
        assert dkim_keys.dkimpy(replies[0][1] + msgs[0]) == [True, True]
        assert replies[1][1] == b""
        # 20 messages in one write: 40 signatures take well over FLUSH_AFTER, so the first
        # replies come before the last message is signed
        many = [_message(f"a@{DOMAIN}", i) for i in range(20)]
        ours.sendall(b"".join(worker.REQ.pack(len(m), 100 + i, T) + m for i, m in enumerate(many)))
        frames = _replies(ours, 20)
        assert [r[0] for frame in frames for r in frame] == list(range(100, 120))
        assert len(frames) >= 2
    finally:
        ours.close()
        proc.wait(10)


def test_one_future_per_message_and_a_retry_needs_no_round_trip(dkim_keys: Keys) -> None:
    uvloop.run(_futures(dkim_keys))


async def _futures(dkim_keys: Keys) -> None:
    svc = service.DkimService(_configs(dkim_keys))
    await svc.start()
    try:
        msgs = [_message(f"a@{DOMAIN}", i) for i in range(20)]
        waits = [svc.sign(f"id{i}", T, m) for i, m in enumerate(msgs)]
        assert all(isinstance(w, asyncio.Future) for w in waits)  # no coroutine or task per message
        first = await asyncio.gather(*waits)
        assert all(domains == (DOMAIN,) for _, domains in first)
        assert dkim_keys.dkimpy(first[7][0] + msgs[7]) == [True, True]
        again = svc.sign("id7", T, msgs[7])
        assert isinstance(again, asyncio.Future) and again.done() and again.result() == first[7]
        unsigned = svc.sign("other", T, _message("a@other.test", 0))
        assert isinstance(unsigned, asyncio.Future) and unsigned.result() == (b"", ())
    finally:
        await svc.close()
