# SPDX-License-Identifier: MIT
"""The writer's inbox: frames of any size, split anywhere, come out whole and in order."""

from __future__ import annotations

import random
import socket
import threading

import pytest

from fastmta.spool.writer import OP, PUT, REQ, Inbox, _fill


def _frames(sizes: list[int]) -> list[bytes]:
    kinds = (OP, PUT)
    return [REQ.pack(n, seq, kinds[seq % 2]) + bytes([seq % 251]) * n for seq, n in enumerate(sizes, 1)]


def _drain(inbox: Inbox, count: int, max_bytes: int) -> list[tuple[int, int, bytes]]:
    """Batches until ``count`` frames are out, as (seq, kind, payload) — payloads copied, as LMDB would."""
    got: list[tuple[int, int, bytes]] = []
    eof = False
    while len(got) < count:
        if not inbox.has_frame():
            assert not eof, "EOF before every frame arrived"
            eof = _fill(inbox, max_bytes, 0.0, False)
        batch, used = inbox.frames(max_bytes)
        assert used == sum(REQ.size + r.nbytes for r in batch)
        got += [(r.seq, r.kind, bytes(r.body) if r.kind == PUT else b"") for r in batch]
        del batch
    return got


@pytest.mark.parametrize("seed", range(5))
def test_frames_split_anywhere_come_out_whole(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rnd = random.Random(seed)
    sizes = [rnd.choice([0, 1, 20, 4096, 100_000, 3 * 1024**2]) for _ in range(40)]
    stream = b"".join(_frames(sizes))
    # Only the framing is under test here, not the PUT payload layout.
    monkeypatch.setattr("fastmta.spool.writer.Request.__init__", _raw_request)
    ours, theirs = socket.socketpair()

    def send() -> None:
        pos = 0
        while pos < len(stream):
            n = rnd.choice([1, 7, 4096, 65536, 1 << 20])
            theirs.sendall(stream[pos : pos + n])
            pos += n
        theirs.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=send)
    t.start()
    try:
        got = _drain(Inbox(ours), len(sizes), 8 * 1024**2)
    finally:
        t.join(30)
        ours.close()
        theirs.close()
    assert [seq for seq, _, _ in got] == list(range(1, len(sizes) + 1))
    for seq, kind, body in got:
        if kind == PUT:
            assert body == bytes([seq % 251]) * sizes[seq - 1]


def test_a_frame_bigger_than_the_buffer_grows_it() -> None:
    ours, theirs = socket.socketpair()
    frame = _frames([5 * 1024**2])[0]
    t = threading.Thread(target=lambda: (theirs.sendall(frame), theirs.shutdown(socket.SHUT_WR)))
    t.start()
    inbox = Inbox(ours)
    try:
        while not inbox.has_frame():
            _fill(inbox, 1024, 0.0, False)
        batch, used = inbox.frames(1024)  # over max_bytes, yet a batch always takes one frame
    finally:
        t.join(30)
        ours.close()
        theirs.close()
    assert len(batch) == 1 and used == len(frame) and len(inbox.buf) >= len(frame)
    assert inbox.pending() == 0


def _raw_request(self: object, seq: int, kind: int, payload: memoryview) -> None:
    self.seq, self.kind, self.nbytes, self.body = seq, kind, len(payload), payload  # type: ignore[attr-defined]
