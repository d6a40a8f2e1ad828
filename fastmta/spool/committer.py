# SPDX-License-Identifier: MIT
"""Group commit, loop side: frames to the writer process, one wake-up per batch.

The loop encodes each operation once (the envelope record is built by the
caller), sends it to the writer's socket (at once to an idle writer, once per loop
iteration while a commit is in flight) and keeps the future by sequence number.
The writer (``writer.py``, which says why it is a process) answers once per
committed batch; ``on_batch`` then resolves that batch's futures
on the loop. If the writer dies, everything in flight fails with
``SpoolUnavailableError`` (nothing was acknowledged, so nothing is lost) and a
new writer is started for the next operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastmta import metrics
from fastmta.config import SpoolConfig
from fastmta.errors import SpoolFullError, SpoolUnavailableError
from fastmta.spool.records import Envelope
from fastmta.spool.space import Space, shortage
from fastmta.spool.writer import ACK, ERROR, FULL, OK, OP, PUT, REC_LEN, REQ

log = logging.getLogger("fastmta.spool")
_COMMIT_SECONDS = metrics.bound(metrics.spool_commit_seconds)
_BATCH_SIZE = metrics.bound(metrics.spool_commit_batch_size)
_PKG_ROOT = str(Path(__file__).resolve().parent.parent.parent)
_RESTART_EVERY = 1.0
FULL_HOLD = 5.0  # a put failed for space: refuse before DATA this long, or until more room is measured
SEND_BUFFER = 16 * 1024**2
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)  # Linux
_WRITER_MAIN = "import sys; from fastmta.spool.writer import main; sys.exit(main(sys.argv[1:]))"


class Callback:
    """A future's two setters around one plain function, ``fn(None)`` or ``fn(exception)``.

    The receive path waits on a commit per message: calling back from the batch's
    acknowledgement skips a Future, its done-callback and the loop hop of
    ``call_soon``, so the 250 goes out in the same loop iteration as the commit's
    news. The function runs at once: whoever calls ``set_*`` must be on the loop.
    """

    __slots__ = ("fn", "_done")

    def __init__(self, fn: Callable[[BaseException | None], None]) -> None:
        self.fn = fn
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, value: Any) -> None:
        self._call(None)

    def set_exception(self, exc: BaseException) -> None:
        self._call(exc)

    def _call(self, exc: BaseException | None) -> None:
        self._done = True
        try:
            self.fn(exc)
        except Exception:  # a bug in one waiter must not keep the rest of the batch waiting
            log.exception("spool commit callback failed")


class Pending:
    """One operation waiting for its commit."""

    __slots__ = ("fut", "envelope")

    def __init__(self, fut: asyncio.Future[Any] | Callback, envelope: Envelope | None) -> None:
        self.fut, self.envelope = fut, envelope


OnBatch = Callable[[list[Pending], list[tuple[int, Any]]], None]


class _Link(asyncio.Protocol):
    """Reads the writer's acknowledgements."""

    def __init__(self, committer: Committer) -> None:
        self.c = committer
        self.buf = bytearray()
        self.ready: asyncio.Future[dict[str, Any]] = committer.loop.create_future()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        while len(buf) - pos >= ACK.size:
            (n,) = ACK.unpack_from(buf, pos)
            if len(buf) - pos - ACK.size < n:
                break
            msg = pickle.loads(buf[pos + ACK.size : pos + ACK.size + n])
            pos += ACK.size + n
            if not self.ready.done():
                self.c._ready(msg)
                self.ready.set_result(msg)
            else:
                self.c._acked(msg)
        del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(SpoolUnavailableError())
        self.c._lost(self)


class Committer:
    """The loop's end of the writer process."""

    def __init__(self, cfg: SpoolConfig, loop: asyncio.AbstractEventLoop, on_batch: OnBatch) -> None:
        self.cfg = cfg
        self.loop = loop
        self.on_batch = on_batch
        self.failure: str | None = None
        self.space: Space | None = None  # as the writer last measured it (space.py)
        self.shortage: str | None = None  # why new mail must wait for room, judged on each measurement
        self.full_until = 0.0  # FULL_HOLD's end (monotonic), 0 when none
        self._seq = 0
        self._pending: dict[int, Pending] = {}
        self._transport: asyncio.Transport | None = None
        self._link: _Link | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._closing = False
        self._started_at = 0.0
        self._restarting: asyncio.Task[None] | None = None
        self._raw: socket.socket | None = None
        self._out: list[bytes] = []

    async def start(self) -> None:
        """Start the writer process and wait until it has the spool open."""
        self._started_at = time.monotonic()
        ours, theirs = socket.socketpair()
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [_PKG_ROOT, os.environ.get("PYTHONPATH")])),
        }
        cmd = [sys.executable, "-c", _WRITER_MAIN, "--fd", str(theirs.fileno()),
               "--path", self.cfg.path, "--map-size", str(self.cfg.map_size),
               "--max-map-size", str(self.cfg.max_map_size),
               "--max-batch-bytes", str(self.cfg.max_batch_bytes),
               "--commit-window", str(self.cfg.commit_window)]  # fmt: skip
        if not self.cfg.sync:
            cmd.append("--no-sync")
        try:
            self._proc = subprocess.Popen(cmd, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, env=env)  # fmt: skip
        finally:
            theirs.close()
        _widen(ours)
        self._raw = ours.dup()  # to shut down the write side without the loop (close())
        transport, link = await self.loop.create_unix_connection(lambda: _Link(self), sock=ours)
        self._transport, self._link = transport, link
        msg = await asyncio.wait_for(link.ready, 60)
        if "error" in msg:
            raise SpoolUnavailableError()

    def _ready(self, msg: dict[str, Any]) -> None:
        """The writer's first message, handled at once: an acknowledgement read in the same
        ``data_received`` may resolve a put before ``start()`` wakes up, and health must
        already say so."""
        if "error" in msg:
            self.failure = str(msg["error"])
        else:
            self._measured(msg)
            self.failure = None

    def _measured(self, msg: dict[str, Any]) -> None:
        space = msg.get("space")
        if space is None:
            return
        last = self.space
        if last is None or space.map_room() > last.map_room() or space.disk_room() > last.disk_room():
            self.full_until = 0.0
        self.space, self.shortage = space, shortage(space)

    def put(
        self,
        fut: asyncio.Future[Any] | Callback,
        envelope: Envelope,
        id_b: bytes,
        record: bytes,
        head: bytes,
        body: bytes,
    ) -> None:
        """Send a new message, stored as ``head + body`` (record prepared by the caller);
        ``fut`` resolves after commit."""
        seq = self._send_check(fut, envelope)
        if seq:
            size = 20 + len(record) + len(head) + len(body)
            self._send(REQ.pack(size, seq, PUT) + id_b + REC_LEN.pack(len(record)) + record, head, body)

    def op(self, fut: asyncio.Future[Any], name: str, *args: Any) -> None:
        """Send an ``ops.<name>(store, txn, *args)`` operation."""
        seq = self._send_check(fut, None)
        if seq:
            payload = pickle.dumps((name, args), protocol=pickle.HIGHEST_PROTOCOL)
            self._send(REQ.pack(len(payload), seq, OP) + payload)

    def _send(self, *frames: bytes) -> None:
        """To an idle writer at once (nothing else to batch with); while a commit is in
        flight, once per loop iteration: the frames wait for that commit anyway, and one
        write per iteration instead of one per message saves the syscall and the writer's
        wake-up each."""
        if self._out:
            self._out.extend(frames)
        elif len(self._pending) == 1:
            self._transport.writelines(frames)  # type: ignore[union-attr]
        else:
            self._out.extend(frames)
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self._transport is not None and not self._transport.is_closing():
            self._transport.writelines(out)

    def _send_check(self, fut: asyncio.Future[Any] | Callback, envelope: Envelope | None) -> int:
        if self._transport is None or self._transport.is_closing():
            self._restart_soon()
            fut.set_exception(SpoolUnavailableError())
            return 0
        self._seq = seq = (self._seq + 1) & 0xFFFFFFFF or 1
        self._pending[seq] = Pending(fut, envelope)
        return seq

    def _acked(self, msg: dict[str, Any]) -> None:
        self._measured(msg)
        if "seconds" not in msg:
            return  # an idle writer's new measurement alone
        results = msg["results"]
        _COMMIT_SECONDS.observe(msg["seconds"])
        _BATCH_SIZE.observe(msg["ops"])
        pop = self._pending.pop
        batch, outcomes = [], []
        for seq, status, value in results:
            if status == FULL:
                self.full_until = time.monotonic() + FULL_HOLD
            p = pop(seq, None)
            if p is not None:  # None: already failed by close(); the commit still happened
                batch.append(p)
                outcomes.append((status, value))
        self.on_batch(batch, outcomes)

    def _lost(self, link: _Link) -> None:
        if link is not self._link:
            return
        self._transport = None
        self._out = []
        if self._raw is not None:
            self._raw.close()
            self._raw = None
        pending, self._pending = self._pending, {}
        for p in pending.values():
            if not p.fut.done():
                p.fut.set_exception(SpoolUnavailableError())
        if not self._closing:
            self.failure = "spool writer exited"
            log.error("spool writer process exited (code %s); restarting", self._proc and self._proc.poll())
            self._restart_soon()

    def _restart_soon(self) -> None:
        if self._closing or (self._restarting is not None and not self._restarting.done()):
            return
        self._restarting = self.loop.create_task(self._restart())

    async def _restart(self) -> None:
        await asyncio.sleep(max(0.0, self._started_at + _RESTART_EVERY - time.monotonic()))
        self._reap()
        with contextlib.suppress(Exception):
            await self.start()

    def _reap(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)

    async def aclose(self) -> None:
        """Let the writer commit and acknowledge everything sent, then stop it."""
        self._closing = True
        if self._transport is not None and self._link is not None:
            self._flush()
            self._transport.write_eof()
            deadline = time.monotonic() + 30
            while self._pending and self._transport is not None and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
        self.close()

    def close(self) -> None:
        """Stop without the loop: what the writer already read still commits (not acknowledged)."""
        self._closing = True
        raw, self._raw = self._raw, None
        if raw is not None:
            with contextlib.suppress(OSError):
                raw.shutdown(socket.SHUT_WR)  # works without the loop, unlike write_eof()
            self._reap()
            raw.close()
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self._reap()
        pending, self._pending = self._pending, {}
        for p in pending.values():
            if not p.fut.done():
                p.fut.set_exception(SpoolUnavailableError())


def _widen(sock: socket.socket) -> None:
    """A big send buffer: the loop hands bytes to the kernel only between callbacks, so
    the buffer, not the writer, capped a batch (~50 frames of 4 KiB with the 208 KiB
    default under a busy loop). SO_SNDBUFFORCE passes net.core.wmem_max when allowed."""
    for opt in (_SO_SNDBUFFORCE, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, SEND_BUFFER)
            return
        except OSError:
            continue


def outcome(status: int, value: Any) -> Any:
    """A writer result as a value or an exception instance."""
    if status == OK:
        return value
    if status == FULL:
        return SpoolFullError()
    if status == ERROR:
        return RuntimeError(value)
    return SpoolUnavailableError()
