# SPDX-License-Identifier: MIT
"""The event journal: delivery-log events kept on disk until every webhook has them.

Webhooks get events at least once, so an event must be durable before the state
change it reports: the scheduler hands its log records to the journal in the same
loop turn, before it sends the spool updates of those rounds, and the writer
process commits frames in order, so an event is never younger on disk than its
state change. A crash in between leaves the event without the change: the
attempt is made again and reported twice (a duplicate, never a gap).

Layout in the spool's LMDB environment:

* ``events`` sequence number (8 bytes, big-endian, from 1) → event name, ``\\n``,
  the delivery-log JSON line. The writer numbers appends in commit order.
* ``meta`` ``webhook:<name>`` → the last sequence number that webhook acknowledged
  (8 bytes). Events every configured webhook acknowledged are deleted at once, so
  ``meta`` ``events:last`` keeps the last number given out: numbers never repeat.

A webhook that stays away is bounded: past ``keep`` events the oldest are dropped
(its ``max_backlog``); the reader notices the gap and counts it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import lmdb

from fastmta.spool.store import Store

SEQ = struct.Struct(">Q")
CURSOR_PREFIX = b"webhook:"
LAST_KEY = b"events:last"
_PRUNE_MAX = 10_000  # entries deleted by one operation (the rest goes with the next one)


def cursor_key(name: str) -> bytes:
    return CURSOR_PREFIX + name.encode("utf-8")


def _last(txn: lmdb.Transaction, db: lmdb._Database) -> int:
    cur = txn.cursor(db)
    return int(SEQ.unpack(cur.key())[0]) if cur.last() else 0


def _first(txn: lmdb.Transaction, db: lmdb._Database) -> int:
    cur = txn.cursor(db)
    return int(SEQ.unpack(cur.key())[0]) if cur.first() else 0


def _delete_upto(txn: lmdb.Transaction, db: lmdb._Database, seq: int) -> None:
    cur = txn.cursor(db)
    if not cur.first():
        return
    for _ in range(_PRUNE_MAX):
        key = cur.key()  # empty once the last entry is deleted
        if not key or SEQ.unpack(key)[0] > seq or not cur.delete():
            break


# --- operations the writer process runs (ops.py exports them) -------------------------


def append(store: Store, txn: lmdb.Transaction, items: Sequence[bytes], keep: int) -> int:
    """Number and store ``items`` (``event\\nline``); keep at most ``keep``; the last number."""
    db = store.events
    last = max(_last(txn, db), _get(txn, store, LAST_KEY))
    txn.cursor(db).putmulti([(SEQ.pack(last + i), v) for i, v in enumerate(items, 1)], append=True)
    last += len(items)
    txn.put(LAST_KEY, SEQ.pack(last), db=store.meta)
    if last - _first(txn, db) + 1 > keep:
        _delete_upto(txn, db, last - keep)
    return last


def ack(store: Store, txn: lmdb.Transaction, name: str, seq: int, names: Sequence[str]) -> int:
    """Save webhook ``name``'s cursor; delete what every webhook in ``names`` has. The cursor."""
    txn.put(cursor_key(name), SEQ.pack(seq), db=store.meta)
    done = min((_get(txn, store, cursor_key(n)) for n in names), default=seq)
    if done:
        _delete_upto(txn, store.events, done)
    return seq


def _get(txn: lmdb.Transaction, store: Store, key: bytes) -> int:
    raw = txn.get(key, db=store.meta)
    return int(SEQ.unpack(bytes(raw))[0]) if raw is not None and len(raw) == SEQ.size else 0


# --- reads (short read transactions in the serving process) ----------------------------


def cursor(store: Store, name: str) -> int:
    """The last sequence number ``name`` acknowledged (0: none yet)."""
    with store.read() as txn:
        return _get(txn, store, cursor_key(name))


def after(store: Store, seq: int, limit: int) -> tuple[list[tuple[int, bytes]], int, int]:
    """Up to ``limit`` (number, value) pairs after ``seq``; also the first number held and
    the last number given out (first = last + 1 when none is held)."""
    out: list[tuple[int, bytes]] = []
    db = store.events
    with store.read() as txn:
        first, last = _first(txn, db), max(_last(txn, db), _get(txn, store, LAST_KEY))
        first = first or last + 1
        cur = txn.cursor(db)
        if last > seq and cur.set_range(SEQ.pack(seq + 1)):
            for k, v in cur:
                out.append((int(SEQ.unpack(k)[0]), bytes(v)))
                if len(out) >= limit:
                    break
    return out, first, last
