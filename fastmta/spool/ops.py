# SPDX-License-Identifier: MIT
"""Read-modify-write operations on one message, run inside a write transaction.

The writer process runs them for the scheduler; ``fastmta queue`` runs them in
its own short write transaction. Each keeps envelope and schedule index in step:
the schedule key is always derived from the stored ``next_attempt``. A message
that vanished meanwhile (deleted by an administrator) is not an error: the
operation reports False and changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import lmdb

from fastmta.spool import records
from fastmta.spool.events import ack as webhook_ack
from fastmta.spool.events import append as events_append
from fastmta.spool.records import BOUNCE, PENDING, Envelope, RcptState
from fastmta.spool.store import Store, sched_key

ADMIN_BOUNCE_ERROR = "550 5.0.0 Message deleted from the queue by the administrator"

__all__ = ["bounce", "events_append", "quarantine", "remove", "reschedule", "update", "webhook_ack"]


def load(store: Store, txn: lmdb.Transaction, id_b: bytes) -> Envelope | None:
    raw = txn.get(id_b, db=store.envs)
    return None if raw is None else records.decode(id_b.decode("ascii"), raw)


def save(store: Store, txn: lmdb.Transaction, env: Envelope, old_due: float | None) -> None:
    """Write the envelope back; move its schedule entry if ``next_attempt`` changed."""
    id_b = env.id.encode("ascii")
    txn.put(id_b, records.encode(env), db=store.envs)
    if old_due != env.next_attempt:
        if old_due is not None:
            txn.delete(sched_key(old_due, id_b), db=store.sched)
        txn.put(sched_key(env.next_attempt, id_b), b"", db=store.sched)


def update(
    store: Store,
    txn: lmdb.Transaction,
    id_b: bytes,
    states: Mapping[int, RcptState | str],
    next_due: float | None,
    attempts_inc: int,
) -> bool:
    """Apply a delivery attempt's outcome; remove the message when nothing is pending."""
    env = load(store, txn, id_b)
    if env is None:
        return False
    old_due = env.next_attempt
    env.attempts += attempts_inc
    for idx, st in states.items():
        if not 0 <= idx < len(env.rcpts):
            continue
        rcpt = env.rcpts[idx]
        state, error = (st, "") if isinstance(st, str) else (st[0], st[1] if len(st) > 1 else "")
        if state not in records.STATES:
            raise ValueError(f"unknown recipient state {state!r}")
        rcpt.state = state
        rcpt.attempts += attempts_inc
        if error:
            rcpt.last_error = env.last_error = error[: records.MAX_ERROR]
    if not any(r.pending for r in env.rcpts):
        store.delete_message(txn, id_b, old_due)
        return True
    if next_due is not None:
        env.next_attempt = next_due
    save(store, txn, env, old_due)
    return True


def remove(store: Store, txn: lmdb.Transaction, id_b: bytes) -> bool:
    env = load(store, txn, id_b)
    if env is None:
        return False
    store.delete_message(txn, id_b, env.next_attempt)
    return True


def reschedule(store: Store, txn: lmdb.Transaction, id_b: bytes, due: float) -> bool:
    """``queue flush``: make the message due at ``due`` (usually now)."""
    env = load(store, txn, id_b)
    if env is None:
        return False
    old = env.next_attempt
    env.next_attempt = due
    save(store, txn, env, old)
    return True


def quarantine(store: Store, txn: lmdb.Transaction, id_b: bytes) -> bool:
    """Move a damaged envelope aside (body kept, schedule entry dropped); the caller counts it."""
    raw = txn.get(id_b, db=store.envs)
    if raw is None:
        return False
    txn.put(id_b, raw, db=store.quar)
    txn.delete(id_b, db=store.envs)
    if len(raw) >= records.NEXT_ATTEMPT_END:
        txn.delete(sched_key(records.next_attempt_of(raw), id_b), db=store.sched)
    return True


def bounce(
    store: Store,
    txn: lmdb.Transaction,
    id_b: bytes,
    now: float | None = None,
    error: str = ADMIN_BOUNCE_ERROR,
    domain: str = "",
) -> bool:
    """``queue bounce``: pending recipients (those at ``domain`` when given) → "bounce" with
    ``error``; the scheduler sends the DSN. False if none was pending there."""
    env = load(store, txn, id_b)
    if env is None:
        return False
    old = env.next_attempt
    hit = False
    for r in env.rcpts:
        if r.state == PENDING and (not domain or r.addr.rpartition("@")[2].lower() == domain):
            r.state, r.last_error, hit = BOUNCE, error, True
    if not hit and domain:
        return False
    env.last_error = error
    env.next_attempt = time.time() if now is None else now
    save(store, txn, env, old)
    return True
