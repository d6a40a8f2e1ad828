# SPDX-License-Identifier: MIT
"""The spool writer process: group-commits what the server sends, one fsync per batch.

Every spool write of a running server happens here, in a process of its own, so
that LMDB has a GIL of its own: py-lmdb releases the GIL inside each call, and a
writer *thread* would wait up to one switch interval (5 ms) to win it back from a
busy event loop after every call. ``committer.py`` is the loop's end: it sends
frames (at once to an idle writer, once per loop iteration while a commit is in
flight) and resolves futures from one acknowledgement per batch.

Protocol on a stream socket (both directions little-endian):

* request ``<IIB`` (payload length, sequence number, kind) + payload; kind 1 = put
  (16-byte id, ``<I`` record length, record, body), kind 2 = operation (pickled
  ``(name, args)`` of a function in ``ops``).
* reply ``<I`` length + pickled dict: ``results`` [(seq, status, value)], ``seconds``
  (commit time), ``ops``, and ``space`` (a ``space.Space``) when it was measured anew.
  Status 0 = done (value), 1 = spool full, 2 = spool unavailable, 3 = error (text).
  The first reply is ``{"ready": True, ...}`` once the spool is open, or
  ``{"error": text}`` if it cannot be opened.
  An idle writer sends ``space`` alone (no ``seconds``) when it changed: deletes by
  another process, or a disk freed by someone else, must end a refusal too.

Batching: whatever arrived while the previous commit ran is the next batch, plus
what keeps streaming in (gaps under 0.2 ms) for at most ``commit_window``; capped by
``max_batch_bytes``. Batches grow with load; an idle writer (it waited for the
first byte after a batch of one) commits at once, without the window.
A zeroed runway ahead of LMDB's last page keeps commits from growing the file
(``Runway``). Map full → grow (no txn open) and retry; at the ceiling or on ENOSPC
the batch is retried one operation per txn so only what does not fit fails. LMDB
commits are atomic: nothing is ever half-written. EOF on the socket (the server
stopped or died) → commit what was received, answer, exit.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import select
import signal
import socket
import struct
import sys
import time
from typing import Any

import lmdb

from fastmta.spool import ops, records
from fastmta.spool.space import Space
from fastmta.spool.store import Store, body_items, is_no_space, sched_key

log = logging.getLogger("fastmta.spool.writer")
REQ = struct.Struct("<IIB")
REC_LEN = struct.Struct("<I")
ACK = struct.Struct("<I")
PUT, OP = 1, 2
OK, FULL, UNAVAILABLE, ERROR = 0, 1, 2, 3
OPERATIONS = frozenset(
    {"update", "remove", "reschedule", "bounce", "quarantine", "events_append", "webhook_ack"}
)
MAX_BATCH_OPS = 8192
RUNWAY = 2 * 1024**2  # zeroed file space kept ahead of LMDB's last page
RUNWAY_STEP = 1024**2
RUNWAY_MAX_BATCH = 256 * 1024  # bigger batches skip the top-up (Runway says why)
_ZEROS = bytes(RUNWAY_STEP)
LINGER_GAP = 0.0002  # a pause this long ends a batch under load early
SPACE_BUSY = 0.05  # s: a committing writer measures its space at most this often
SPACE_IDLE = 1.0  # s: an idle writer measures it this often
_RECV = 1 << 20


class Request:
    __slots__ = ("seq", "kind", "id_b", "record", "body", "name", "args", "nbytes")

    def __init__(self, seq: int, kind: int, payload: memoryview) -> None:
        self.seq, self.kind, self.nbytes = seq, kind, len(payload)
        if kind == PUT:  # LMDB takes buffers: views into the inbox, no copy of the body
            self.id_b = bytes(payload[:16])
            (n,) = REC_LEN.unpack_from(payload, 16)
            self.record = payload[20 : 20 + n]
            self.body = payload[20 + n :]
        else:
            self.name, self.args = pickle.loads(payload)
            if self.name not in OPERATIONS:
                raise ValueError(f"unknown spool operation {self.name!r}")


class BatchWriter:
    """Commits batches of requests against one Store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def commit(self, batch: list[Request]) -> list[tuple[int, Any]]:
        try:
            return self._commit_once(batch, whole=True)
        except lmdb.MapFullError:
            pass
        except lmdb.PanicError:
            raise  # the environment is unusable: exit; the server starts a fresh writer
        except lmdb.Error as e:
            if not is_no_space(e):
                log.error("spool commit failed: %s", e)
                return [(UNAVAILABLE, str(e))] * len(batch)
        # Full: each request on its own; deletes and updates first, so the space
        # they free helps the puts behind them.
        results: list[tuple[int, Any]] = [(UNAVAILABLE, "")] * len(batch)
        for i in sorted(range(len(batch)), key=lambda i: batch[i].kind == PUT):
            results[i] = self._commit_single(batch[i])
        return results

    def _commit_single(self, req: Request) -> tuple[int, Any]:
        while True:
            try:
                return self._commit_once([req], whole=False)[0]
            except lmdb.MapFullError:
                if not self.store.grow(req.nbytes):
                    return (FULL, "")
            except lmdb.PanicError:
                raise
            except lmdb.Error as e:
                return (FULL, "") if is_no_space(e) else (UNAVAILABLE, str(e))

    def _commit_once(self, batch: list[Request], whole: bool) -> list[tuple[int, Any]]:
        while True:
            try:
                return self._write(batch)
            except lmdb.MapFullError:
                if not whole or not self.store.grow(sum(r.nbytes for r in batch)):
                    raise
                log.info("spool map grown to %d bytes", self.store.map_size())

    def _write(self, batch: list[Request]) -> list[tuple[int, Any]]:
        """One transaction: a handful of calls for all puts, one function per operation."""
        results: list[tuple[int, Any]] = []
        envs: list[tuple[bytes, bytes | memoryview]] = []
        bodies: list[tuple[bytes, bytes | memoryview]] = []
        sched: list[tuple[bytes, bytes]] = []
        store = self.store
        with store.write() as txn:
            for req in batch:
                if req.kind == PUT:
                    envs.append((req.id_b, req.record))
                    bodies.extend(body_items(req.id_b, req.body))
                    sched.append((sched_key(records.next_attempt_of(req.record), req.id_b), b""))
                    results.append((OK, None))
                    continue
                try:
                    results.append((OK, getattr(ops, req.name)(store, txn, *req.args)))
                except lmdb.MapFullError:
                    raise
                except Exception as e:  # one bad operation must not sink the batch
                    results.append((ERROR, f"{type(e).__name__}: {e}"))
            if envs:
                store.put_many(txn, envs, bodies, sched)
        return results


class Runway:
    """Written (zeroed) file space ahead of LMDB's last page, topped up between batches.

    A page written past the end of data.mdb changes the file's size and block map,
    so the commit's fdatasync must also commit the filesystem journal; into blocks
    already written it flushes only the data, which makes small commits cheaper.
    Durability is untouched (each commit's own fdatasync still covers its pages;
    LMDB never reads past its last page), and a failure here (full disk, file-size
    limit) only switches the runway off. Only small batches top it up: the zeros
    double the bytes written, and a big batch spreads its journal commit over
    enough data that the runway no longer pays.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._fd = -1
        try:
            self._fd = os.open(os.path.join(store.path, "data.mdb"), os.O_RDWR | os.O_CLOEXEC)
            self._end = os.fstat(self._fd).st_size
        except OSError as e:
            self._off(e)

    def top_up(self) -> None:
        """Add one step of zeros (one write, one fdatasync) when less than ``RUNWAY`` is left.

        Inside a write transaction (then aborted): LMDB's writer lock keeps every other
        process that shares the spool (workers, ``fastmta queue``) from writing pages
        while the zeros go in past the file's end and past the last committed page.
        """
        if self._fd < 0 or self._end - self.store.high_water() >= RUNWAY:
            return
        store = self.store
        try:
            txn = store.env.begin(write=True)
        except lmdb.Error:
            return  # e.g. the map was grown by another process: the next commit adopts it first
        try:
            used = store.high_water()
            self._end = max(os.fstat(self._fd).st_size, used)
            if self._end - used < RUNWAY and self._end + RUNWAY_STEP <= store.map_size():
                n = os.pwrite(self._fd, _ZEROS, self._end)
                os.fdatasync(self._fd)
                self._end += n
        except OSError as e:
            self._off(e)
        finally:
            txn.abort()

    def _off(self, e: OSError) -> None:
        log.info("no zeroed runway ahead of the spool data (%s): commits stay durable, a little slower", e)
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Meter:
    """The spool's room (space.py), measured again when due: ~15 µs, so not after every
    commit of a busy writer, and on a timer while idle."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.at = -SPACE_IDLE
        self.last: Space | None = None

    def idle_wait(self) -> float:
        """Seconds an idle writer may wait for requests before it measures again."""
        return max(0.0, self.at + SPACE_IDLE - time.monotonic())

    def measure(self, every: float) -> Space | None:
        """A fresh measurement when ``every`` seconds passed and it changed, else None."""
        now = time.monotonic()
        if now - self.at < every:
            return None
        self.at = now
        try:
            space = self.store.space(disk=True)
        except lmdb.Error:
            return None
        if space == self.last:
            return None
        self.last = space
        return space


def _send(sock: socket.socket, msg: dict[str, Any]) -> None:
    data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(ACK.pack(len(data)) + data)


def serve(sock: socket.socket, store: Store, max_batch_bytes: int, window: float = 0.0) -> None:
    """Read requests, commit them in batches, acknowledge each batch; return at EOF."""
    writer = BatchWriter(store)
    runway = Runway(store)
    inbox = Inbox(sock)
    meter = Meter(store)
    eof = False
    ops = 0  # in the last batch
    _send(sock, {"ready": True, "space": meter.measure(0.0), "results": []})
    while not eof or inbox.pending():
        if not eof and not inbox.has_frame():
            idle_wait = None if inbox.pending() else meter.idle_wait()
            eof = _fill(inbox, max_batch_bytes, window, ops > 1, idle_wait)
            if not eof and not inbox.pending():  # nothing came within idle_wait: measure the room
                space = meter.measure(SPACE_IDLE)
                if space is not None:
                    try:
                        _send(sock, {"space": space, "results": []})
                    except OSError:
                        eof = True  # the server is gone: nothing is waiting, stop
                continue
        batch, used = inbox.frames(max_batch_bytes)
        if not batch:
            if eof:
                break  # a truncated last frame: the server died mid-send, nobody waits
            continue
        ops = len(batch)
        t0 = time.perf_counter()
        results = writer.commit(batch)
        seconds = time.perf_counter() - t0
        reply = {"results": [(r.seq, *res) for r, res in zip(batch, results, strict=True)],
                 "seconds": seconds, "ops": ops}  # fmt: skip
        space = meter.measure(SPACE_BUSY)
        if space is not None:
            reply["space"] = space
        del batch  # its views into the inbox buffer: the next fill may move those bytes
        try:
            _send(sock, reply)
        except OSError:
            eof = True  # the server is gone; keep committing what arrived, then stop
        if used <= RUNWAY_MAX_BATCH:
            runway.top_up()  # after the acknowledgement: off the committed batch's path
    runway.close()


class Inbox:
    """Frames from the server, received straight into one reused buffer.

    A batch is memoryviews into it (LMDB copies them at commit), so a body is copied
    once, by the kernel, on its way here: no bytes object per ``recv``, no join, no
    copy per frame. The buffer grows while batches fill it and stays grown.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray(_RECV)
        self.start = 0  # first byte not yet handed out in a batch
        self.end = 0  # end of the received bytes

    def pending(self) -> int:
        return self.end - self.start

    def _head_length(self) -> int:
        """Length of the first frame (0: its header is not in yet)."""
        if self.end - self.start < REQ.size:
            return 0
        return REQ.size + int(REQ.unpack_from(self.buf, self.start)[0])

    def has_frame(self) -> bool:
        n = self._head_length()
        return 0 < n <= self.end - self.start

    def recv(self, block: bool) -> int:
        """Receive what is waiting (or wait for it): bytes read, 0 at EOF, -1 when none waits."""
        if self.end == len(self.buf):
            self._make_room()
        with memoryview(self.buf) as whole, whole[self.end :] as tail:
            try:
                n = self.sock.recv_into(tail, 0, 0 if block else socket.MSG_DONTWAIT)
            except BlockingIOError:
                return -1
        self.end += n
        return n

    def _make_room(self) -> None:
        """Move the unread bytes to the front; grow if that frees nothing or a frame needs more."""
        n = self.end - self.start
        if self.start:
            self.buf[:n] = self.buf[self.start : self.end]
            self.start, self.end = 0, n
        need = self._head_length()
        if n == len(self.buf) or need > len(self.buf):
            grown = bytearray(max(2 * len(self.buf), need))
            grown[:n] = self.buf[:n]
            self.buf = grown

    def frames(self, max_bytes: int) -> tuple[list[Request], int]:
        """Complete frames at the head (at least one if present, up to ``max_bytes``), and their size."""
        batch: list[Request] = []
        buf, pos, end = self.buf, self.start, self.end
        view = memoryview(buf)
        while end - pos >= REQ.size and len(batch) < MAX_BATCH_OPS:
            length, seq, kind = REQ.unpack_from(buf, pos)
            stop = pos + REQ.size + length
            if stop > end or (batch and stop - self.start > max_bytes):
                break
            batch.append(Request(seq, kind, view[pos + REQ.size : stop]))
            pos = stop
        used = pos - self.start
        self.start = pos
        if self.start == self.end:
            self.start = self.end = 0
        return batch, used


def _fill(inbox: Inbox, max_bytes: int, window: float, loaded: bool, idle_wait: float | None = None) -> bool:
    """Take all that is waiting: the batch. True at EOF.

    Under load (bytes already waiting after a commit, or ``loaded``: the last batch
    held several operations) it also takes what keeps streaming in (gaps under
    ``LINGER_GAP``) for at most ``window``, so batches grow with load. An idle
    writer commits the first arrival at once: one client would otherwise wait out a
    gap on every message. So the wait for that first arrival happens here, after
    the look for bytes already waiting, never before it: bytes that arrive while
    the writer waits are not load.

    ``idle_wait``: when nothing is waiting, give up after this many seconds and
    return with nothing received (None: wait as long as it takes).
    """
    n = inbox.recv(block=False)
    if n < 0:
        if idle_wait is not None and not select.select([inbox.sock], [], [], idle_wait)[0]:
            return False
        n = inbox.recv(block=True)
    else:
        loaded = True
    window_end = time.monotonic() + window if loaded else 0.0
    if n == 0:
        return True
    while inbox.pending() < max_bytes:
        n = inbox.recv(block=False)
        if n < 0:
            left = window_end - time.monotonic()
            if left <= 0 or not select.select([inbox.sock], [], [], min(left, LINGER_GAP))[0]:
                return False
            continue
        if n == 0:
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fastmta-spool-writer")
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--path", required=True)
    ap.add_argument("--map-size", type=int, required=True)
    ap.add_argument("--max-map-size", type=int, required=True)
    ap.add_argument("--max-batch-bytes", type=int, required=True)
    ap.add_argument("--commit-window", type=float, default=0.0)
    ap.add_argument("--no-sync", action="store_true")
    args = ap.parse_args(argv)
    # Only EOF from the server ends this process (after its last commit): a Ctrl-C or a
    # control-group SIGTERM (systemd) reaching every process must not cut that short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(stream=sys.stderr, format="fastmta spool writer: %(message)s", level=logging.INFO)
    sock = socket.socket(fileno=args.fd)
    try:
        store = Store(args.path, args.map_size, args.max_map_size, sync=not args.no_sync)
    except Exception as e:
        log.error("cannot open the spool at %s: %s", args.path, e)
        _send(sock, {"error": f"cannot open spool: {e}"})
        return 1
    try:
        serve(sock, store, args.max_batch_bytes, args.commit_window)
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
