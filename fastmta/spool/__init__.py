# SPDX-License-Identifier: MIT
"""The spool: durable, group-committed message storage on LMDB.

``put`` resolves only after the message is in an fsync'd LMDB transaction, so a
``250`` is never sent for mail a crash could lose. Reads (``envelope``, ``body``,
``due``) are short read transactions in this process; once ``start`` has run,
every write goes through the writer process (``writer.py`` says why a process).
The scheduler sees envelopes and the schedule index, never bodies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from fastmta import metrics
from fastmta.config import SpoolConfig
from fastmta.errors import SpoolUnavailableError
from fastmta.spool import events, flush, records, suspend
from fastmta.spool.committer import Callback, Committer, Pending, outcome
from fastmta.spool.ids import new_id
from fastmta.spool.records import Envelope, RcptState, Recipient, RecordError
from fastmta.spool.recovery import RecoveryReport, recover
from fastmta.spool.space import space_stats
from fastmta.spool.store import Store

__all__ = ["Envelope", "RcptState", "Recipient", "Spool", "new_id"]
log = logging.getLogger("fastmta.spool")


class Spool:
    """One process's handle on the spool (see docs/interfaces.md §Spool)."""

    def __init__(self, cfg: SpoolConfig, store: Store, report: RecoveryReport) -> None:
        self.cfg = cfg
        self.store = store
        self.recovery = report
        self._committer: Committer | None = None
        self._callbacks: list[Callable[[list[Envelope]], Any]] = []
        self._closed = False

    @classmethod
    def open(cls, cfg: SpoolConfig, recover_now: bool = True) -> Spool:
        """Open (creating 0700/0600) and check the spool; synchronous, before the loop runs."""
        store = Store(cfg.path, cfg.map_size, cfg.max_map_size, sync=cfg.sync)
        report = recover(store) if recover_now else RecoveryReport()
        spool = cls(cfg, store, report)
        metrics.set_spool_stats_source(spool.stats)
        return spool

    async def start(self) -> None:
        """Start the writer process (see writer.py for why a process) on the running loop."""
        if self._committer is None:
            committer = Committer(self.cfg, asyncio.get_running_loop(), self._on_batch)
            await committer.start()
            self._committer = committer

    # --- writes ------------------------------------------------------------------

    def put(self, envelope: Envelope, body: bytes, head: bytes = b"") -> asyncio.Future[str]:
        """Store a new message; the future resolves after the fsync'd commit (to its id).

        Fills ``id`` (if empty), ``size``, ``arrived`` and ``next_attempt`` (if 0:
        due at once). Raises ``SpoolFullError`` past the ceiling or on a full disk.
        """
        fut: asyncio.Future[str] = self._running().loop.create_future()
        self._put(fut, envelope, body, head)
        return fut

    def put_then(
        self, envelope: Envelope, body: bytes, head: bytes, done: Callable[[BaseException | None], None]
    ) -> None:
        """``put`` for the receive path: ``done(None)`` after the commit, or ``done(error)``,
        called on the loop straight from the batch's acknowledgement (no Future, no loop
        hop), after the ``on_commit`` callbacks have seen the batch."""
        self._put(Callback(done), envelope, body, head)

    def _put(self, fut: asyncio.Future[str] | Callback, envelope: Envelope, body: bytes, head: bytes) -> None:
        committer = self._running()
        if not envelope.id:
            envelope.id = new_id()
        envelope.size = len(head) + len(body)
        if not envelope.arrived:
            envelope.arrived = time.time()
        if not envelope.next_attempt:
            envelope.next_attempt = envelope.arrived
        committer.put(fut, envelope, envelope.id.encode("ascii"), records.encode(envelope), head, body)

    async def update(
        self,
        msg_id: str,
        rcpt_states: Mapping[int, RcptState | str],
        next_due: float | None,
        attempts_inc: int = 1,
    ) -> bool:
        """Record an attempt's per-recipient outcome and the next due time.

        ``next_due=None`` keeps the schedule. When no recipient is left pending the
        message is removed. False if the message is gone (deleted meanwhile).
        """
        states = {int(k): (v if isinstance(v, str) else tuple(v)) for k, v in rcpt_states.items()}
        return bool(await self._op("update", msg_id.encode("ascii"), states, next_due, attempts_inc))

    async def remove(self, msg_id: str) -> bool:
        return bool(await self._op("remove", msg_id.encode("ascii")))

    async def reschedule(self, msg_id: str, due: float) -> bool:
        """Move a message's next attempt (``queue flush`` uses due = now)."""
        return bool(await self._op("reschedule", msg_id.encode("ascii"), due))

    def update_many(
        self, items: Iterable[tuple[str, Mapping[int, RcptState | str], float | None]], attempts_inc: int = 1
    ) -> list[asyncio.Future[Any]]:
        """``update`` of many messages: plain futures (True, or False: gone), no coroutine
        and so no Task per message; they share the writer's group commits as usual."""
        out = []
        for msg_id, rcpt_states, next_due in items:
            states = {int(k): (v if isinstance(v, str) else tuple(v)) for k, v in rcpt_states.items()}
            out.append(self._op("update", msg_id.encode("ascii"), states, next_due, attempts_inc))
        return out

    def append_events(self, items: Sequence[bytes], keep: int) -> asyncio.Future[Any]:
        """Journal delivery-log events for the webhooks (events.py); resolves to the last
        sequence number once committed. Sent before the spool updates they report."""
        return self._op("events_append", list(items), keep)

    def ack_events(self, name: str, seq: int, names: Sequence[str]) -> asyncio.Future[Any]:
        """Save webhook ``name``'s cursor at ``seq``; what all of ``names`` have is deleted."""
        return self._op("webhook_ack", name, seq, list(names))

    def _op(self, name: str, *args: Any) -> asyncio.Future[Any]:
        committer = self._running()
        fut = committer.loop.create_future()
        committer.op(fut, name, *args)
        return fut

    def _running(self) -> Committer:
        if self._committer is None or self._closed:
            raise SpoolUnavailableError()
        return self._committer

    def _on_batch(self, batch: list[Pending], results: list[tuple[int, Any]]) -> None:
        """On the loop, once per commit: tell the listeners, then resolve every waiter (a
        ``put_then`` callback runs at once, so the listeners see the batch before any 250)."""
        committed: list[Envelope] = []
        outcomes: list[Any] = []
        for p, (status, value) in zip(batch, results, strict=True):
            res = outcome(status, value)
            if p.envelope is not None and not isinstance(res, BaseException):
                committed.append(p.envelope)
                res = p.envelope.id
            outcomes.append(res)
        if committed:
            for cb in self._callbacks:
                try:
                    cb(committed)
                except Exception:
                    log.exception("spool on_commit callback failed")
        for p, res in zip(batch, outcomes, strict=True):
            if p.fut.done():
                continue
            if isinstance(res, BaseException):
                p.fut.set_exception(res)
            else:
                p.fut.set_result(res)

    def on_commit(self, callback: Callable[[list[Envelope]], Any]) -> None:
        """``callback(envelopes)`` runs on the loop after each commit holding new messages."""
        self._callbacks.append(callback)

    # --- reads ---------------------------------------------------------------------

    def envelope(self, msg_id: str) -> Envelope | None:
        """The stored envelope, or None if gone (or damaged: then it is quarantined)."""
        return self._decode(msg_id, self.store.envelope_raw(msg_id.encode("ascii")))

    def envelopes(self, msg_ids: Sequence[str]) -> list[Envelope | None]:
        """``envelope`` of each id, read in one read transaction (the feeder reads pages)."""
        store = self.store
        with store.read() as txn:
            raws = [txn.get(i.encode("ascii"), db=store.envs) for i in msg_ids]
        return [self._decode(i, raw) for i, raw in zip(msg_ids, raws, strict=True)]

    def _decode(self, msg_id: str, raw: bytes | memoryview | None) -> Envelope | None:
        if raw is None:
            return None
        try:
            return records.decode(msg_id, raw)
        except RecordError as e:
            log.error("spool: damaged envelope %s: %s", msg_id, e)
            if self._committer is not None and not self._closed:
                self._quarantine(msg_id)
            return None

    def _quarantine(self, msg_id: str) -> None:
        def done(f: asyncio.Future[Any]) -> None:
            if not f.cancelled() and f.exception() is None and f.result():
                metrics.spool_quarantined_total.inc()

        self._op("quarantine", msg_id.encode("ascii")).add_done_callback(done)

    def body(self, msg_id: str) -> bytes | None:
        return self.store.body(msg_id.encode("ascii"))

    def due(self, now: float, limit: int, after: tuple[float, str] | None = None) -> list[tuple[float, str]]:
        """Up to ``limit`` (due time, id) pairs with due ≤ now, in due order, after ``after``."""
        return self.store.due(now, limit, after)

    def count(self) -> int:
        """Messages in the spool: the envelope table's entry count (O(1), no scan)."""
        store = self.store
        with store.read() as txn:
            return int(txn.stat(store.envs)["entries"])

    def flushed_since(self, seen: int) -> tuple[int, frozenset[str] | None]:
        """``queue flush`` signal (flush.py): (generation, domains flushed after ``seen``; None = all)."""
        store = self.store
        with store.read() as txn:
            return flush.since(txn.get(flush.KEY, db=store.meta), seen)

    def suspensions(self) -> suspend.Suspensions:
        """Administrative suspensions still running (suspend.py): domain → (until, reason)."""
        store = self.store
        with store.read() as txn:
            return suspend.load(txn.get(suspend.KEY, db=store.meta))

    def events_after(self, seq: int, limit: int) -> tuple[list[tuple[int, bytes]], int, int]:
        """Journalled events after ``seq`` (events.py): (items, first held, last held)."""
        return events.after(self.store, seq, limit)

    def events_cursor(self, name: str) -> int:
        return events.cursor(self.store, name)

    # --- health --------------------------------------------------------------------

    def unhealthy_reason(self) -> str | None:
        """Why new mail should be refused now (452 4.3.1), or None. No I/O: the writer
        measures the room left (space.py) and the committer judges each measurement."""
        c = self._committer
        if self._closed or c is None:
            return "spool not running"
        if c.failure is not None:
            return c.failure
        if c.shortage is not None:
            return c.shortage
        if c.full_until and time.monotonic() < c.full_until:
            return "spool full"
        return None

    def stats(self) -> dict[str, float]:
        """Live data, free pages, high water and map size for the metrics exporter
        (thread-safe, a few µs)."""
        return space_stats(self.store.space())

    async def aclose(self) -> None:
        """Stop taking work, let every operation already sent commit and resolve, close."""
        if self._committer is not None and not self._closed:
            self._closed = True
            await self._committer.aclose()
        self.close()

    def close(self) -> None:
        """Stop now: operations still in flight fail with SpoolUnavailableError (never lost:
        what the writer already read still commits, unacknowledged)."""
        if self.store.env is None:
            return
        self._closed = True
        if self._committer is not None:
            self._committer.close()
        metrics.set_spool_stats_source(None)
        self.store.close()
