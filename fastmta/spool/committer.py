# SPDX-License-Identifier: MIT
"""Group commit: one writer thread turns every queued operation into one fsync'd txn.

The event loop prepares keys and values (``PutOp``) and appends operations to a
deque; the writer takes everything queued (bounded by ``max_batch_bytes``),
writes it with a handful of py-lmdb calls (one ``putmulti`` per database), commits
with fsync, and wakes the loop ONCE per batch with ``call_soon_threadsafe``. Each
py-lmdb call drops the GIL and must win it back from a busy loop (DESIGN.md §4),
so per-batch call count, not per-message work, decides throughput here. Batches
grow with load by themselves: whatever arrived during one commit forms the next.

Map full → grow (on this thread, no txn open) and retry; at the ceiling or on
ENOSPC the batch is retried one operation per txn so only what does not fit fails
with ``SpoolFullError``. LMDB commits are atomic: nothing is ever half-written.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import lmdb

from fastmta import metrics
from fastmta.errors import SpoolFullError, SpoolUnavailableError
from fastmta.spool.records import Envelope
from fastmta.spool.store import Store, is_no_space

log = logging.getLogger("fastmta.spool")
MAX_BATCH_OPS = 4096
_COMMIT_SECONDS = metrics.bound(metrics.spool_commit_seconds)
_BATCH_SIZE = metrics.bound(metrics.spool_commit_batch_size)


class PutOp:
    """A new message, its records prepared on the loop."""

    __slots__ = ("fut", "id_b", "record", "sched", "bodies", "envelope", "nbytes")

    def __init__(
        self,
        fut: asyncio.Future[Any],
        id_b: bytes,
        record: bytes,
        sched: bytes,
        bodies: list[tuple[bytes, bytes]],
        envelope: Envelope,
        nbytes: int,
    ) -> None:
        self.fut, self.id_b, self.record, self.sched = fut, id_b, record, sched
        self.bodies, self.envelope, self.nbytes = bodies, envelope, nbytes


class TxnOp:
    """Any other change: ``fn(store, txn)`` run inside the batch's transaction."""

    __slots__ = ("fut", "fn", "nbytes")

    def __init__(self, fut: asyncio.Future[Any], fn: Callable[[Store, lmdb.Transaction], Any]) -> None:
        self.fut, self.fn, self.nbytes = fut, fn, 256


Op = PutOp | TxnOp
OnBatch = Callable[[list[Op], list[Any]], None]


class Committer:
    """The writer thread of one process."""

    def __init__(
        self, store: Store, loop: asyncio.AbstractEventLoop, max_batch_bytes: int, on_batch: OnBatch
    ) -> None:
        self.store = store
        self.loop = loop
        self.max_batch_bytes = max_batch_bytes
        self.on_batch = on_batch
        self.failure: str | None = None
        self.usage = 0.0  # fraction of the ceiling in use, refreshed after each commit
        self._queue: collections.deque[Op | None] = collections.deque()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fastmta-spool-writer", daemon=True)

    def start(self) -> None:
        self._refresh_usage()
        self._thread.start()

    def submit(self, op: Op) -> None:
        """Queue one operation (loop thread); its future resolves after the commit."""
        self._queue.append(op)
        if not self._wake.is_set():
            self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then end the thread."""
        if self._thread.is_alive():
            self._queue.append(None)
            self._wake.set()
            self._thread.join(timeout)

    # --- writer thread ------------------------------------------------------------

    def _run(self) -> None:
        q = self._queue
        while True:
            self._wake.wait()
            self._wake.clear()
            while q:
                batch: list[Op] = []
                size = 0
                stop = False
                while q and (not batch or (size < self.max_batch_bytes and len(batch) < MAX_BATCH_OPS)):
                    op = q.popleft()
                    if op is None:
                        stop = True
                        break
                    batch.append(op)
                    size += op.nbytes
                if batch:
                    results = self._commit(batch)
                    self._refresh_usage()
                    with contextlib.suppress(RuntimeError):  # loop closed: nobody waits
                        self.loop.call_soon_threadsafe(self.on_batch, batch, results)
                if stop:
                    return

    def _commit(self, batch: list[Op]) -> list[Any]:
        try:
            return self._commit_once(batch, whole=True)
        except lmdb.MapFullError:
            pass
        except lmdb.Error as e:
            if not is_no_space(e):
                log.error("spool commit failed: %s", e)
                self.failure = f"commit failed: {e}"
                return [SpoolUnavailableError()] * len(batch)
        # Full: let each operation succeed or fail on its own; deletes and updates go
        # first so the space they free helps the puts behind them.
        ordered = sorted(range(len(batch)), key=lambda i: isinstance(batch[i], PutOp))
        results: list[Any] = [None] * len(batch)
        for i in ordered:
            results[i] = self._commit_single(batch[i])
        return results

    def _commit_single(self, op: Op) -> Any:
        while True:
            try:
                return self._commit_once([op], whole=False)[0]
            except lmdb.MapFullError:
                if not self.store.grow(op.nbytes):
                    return SpoolFullError()
            except lmdb.Error as e:
                return SpoolFullError() if is_no_space(e) else SpoolUnavailableError()

    def _commit_once(self, batch: list[Op], whole: bool) -> list[Any]:
        """One transaction; MapFullError grows the map and retries (whole batches only)."""
        while True:
            t0 = time.perf_counter()
            try:
                results = self._write(batch)
            except lmdb.MapFullError:
                if not whole:
                    raise
                need = sum(op.nbytes for op in batch)
                if not self.store.grow(need):
                    raise
                log.info("spool map grown to %d bytes", self.store.map_size())
                continue
            _COMMIT_SECONDS.observe(time.perf_counter() - t0)
            _BATCH_SIZE.observe(len(batch))
            return results

    def _write(self, batch: list[Op]) -> list[Any]:
        results: list[Any] = [None] * len(batch)
        envs, bodies, sched = [], [], []
        with self.store.write() as txn:
            for i, op in enumerate(batch):
                if isinstance(op, PutOp):
                    envs.append((op.id_b, op.record))
                    bodies.extend(op.bodies)
                    sched.append((op.sched, b""))
                    results[i] = op.id_b
                else:
                    try:
                        results[i] = op.fn(self.store, txn)
                    except lmdb.MapFullError:
                        raise
                    except Exception as e:  # one bad operation must not sink the batch
                        results[i] = e
            if envs:
                self.store.put_many(txn, envs, bodies, sched)
        return results

    def _refresh_usage(self) -> None:
        with contextlib.suppress(lmdb.Error):
            self.usage = self.store.used_bytes() / self.store.max_map_size
