# SPDX-License-Identifier: MIT
"""The writer's batches: one client's lone message is committed at once, a stream is gathered.

A real writer loop (``serve``) on a socketpair over a real store. The linger gap is
stretched far past what the tests wait, so a batch that lingers where it must not
shows as a missing acknowledgement, not as a fraction of a millisecond.
"""

from __future__ import annotations

import pickle
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fastmta.spool import writer
from fastmta.spool.store import Store
from tests.support import recv_exactly

LONG = 30.0  # s: a linger this long would outlast every wait below
# s: long enough for the writer to finish its last batch and wait for the next byte
# (bytes it finds already there when it looks are load, and rightly gathered)
IDLE = 0.5


@pytest.fixture
def client(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[socket.socket]:
    """The server's end of a writer whose ``commit_window`` is the test's parameter."""
    window = float(request.param)
    store = Store(str(tmp_path / "spool"), 4 * 1024**2, 4 * 1024**2, sync=False)
    ours, theirs = socket.socketpair()
    t = threading.Thread(target=writer.serve, args=(ours, store, 1 << 20, window))
    t.start()
    try:
        theirs.settimeout(10.0)
        assert _ack(theirs).get("ready")
        yield theirs
    finally:
        theirs.shutdown(socket.SHUT_WR)  # EOF: the writer commits what it has and returns
        t.join(LONG + 10)
        ours.close()
        theirs.close()
        store.close()


def _op(seq: int) -> bytes:
    """A removal of a message that is not there: a real operation, a cheap commit."""
    payload = pickle.dumps(("remove", (b"%016d" % seq,)))
    return writer.REQ.pack(len(payload), seq, writer.OP) + payload


def _ack(sock: socket.socket) -> dict[str, Any]:
    """The next reply that acknowledges a commit (idle room measurements skipped)."""
    while True:
        (n,) = writer.ACK.unpack(recv_exactly(sock, writer.ACK.size, "the writer"))
        msg: dict[str, Any] = pickle.loads(recv_exactly(sock, n, "the writer"))
        if "seconds" in msg or "ready" in msg:
            return msg


def _seqs(ack: dict[str, Any]) -> list[int]:
    return [seq for seq, _, _ in ack["results"]]


@pytest.mark.parametrize("client", [LONG], indirect=True)
def test_an_idle_writer_commits_the_first_arrival_at_once(
    client: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer waits for the first byte, then looks for more: what arrived during
    that wait is not load, so one message on one connection never waits out a gap."""
    monkeypatch.setattr(writer, "LINGER_GAP", LONG)
    for seq in (1, 2, 3):  # each one alone, each after the writer went idle again
        threading.Event().wait(IDLE)
        client.sendall(_op(seq))
        try:
            ack = _ack(client)
        except TimeoutError:
            pytest.fail(f"frame {seq} to an idle writer was not committed within 10 s: it lingered")
        assert _seqs(ack) == [seq] and ack["ops"] == 1


@pytest.mark.parametrize("client", [1.0], indirect=True)
def test_under_load_a_stream_is_gathered_for_the_window(
    client: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a batch of several, frames that keep coming join one batch until the window ends."""
    monkeypatch.setattr(writer, "LINGER_GAP", LONG)
    client.sendall(_op(1) + _op(2))  # already waiting together: a batch of two, so load
    assert _seqs(_ack(client)) == [1, 2]
    client.sendall(_op(3))
    threading.Event().wait(0.2)
    client.sendall(_op(4))  # within the 1 s window: the same batch
    assert _seqs(_ack(client)) == [3, 4]
