# SPDX-License-Identifier: MIT
"""The ``queue flush`` signal: "retry now" reaches a throttled destination too.

Rescheduling a message to now is not enough when its destination is suspended
(after a 421 or refused connections): the scheduler would put it straight back
until the suspension ends. So ``fastmta queue flush`` also bumps a generation
counter in the spool's ``meta`` database, with the recipient domains it flushed
(or "all"); the scheduler's feeder reads that one key per pass and lifts the
suspension of those destinations. A short log of recent flushes is kept so two
flushes between feeder passes are both seen; a reader that fell further behind
lifts everything (a flush is never lost, at worst it is wider).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import lmdb

KEY = b"flush"
KEEP = 32  # flushes remembered for readers that missed some passes
MAX_DOMAINS = 1000  # more than this in one flush: recorded as "all"

Scope = frozenset[str] | None  # recipient domains (lower case) to lift; None = every destination


def bump(txn: lmdb.Transaction, meta: lmdb._Database, domains: Iterable[str] | None) -> int:
    """Record one flush (inside the caller's write transaction); its generation."""
    gen, log = _load(txn.get(KEY, db=meta))
    scope = None if domains is None else sorted({d.lower().rstrip(".") for d in domains})
    if scope is not None and len(scope) > MAX_DOMAINS:
        scope = None
    gen += 1
    log = [*log, (gen, scope)][-KEEP:]
    txn.put(KEY, json.dumps({"gen": gen, "log": log}, separators=(",", ":")).encode(), db=meta)
    return gen


def since(raw: bytes | memoryview | None, seen: int) -> tuple[int, Scope]:
    """(current generation, what was flushed after generation ``seen``: domains, or None = all)."""
    gen, log = _load(raw)
    if gen <= seen:
        return gen, frozenset()
    newer = [scope for g, scope in log if g > seen]
    if len(newer) < gen - seen or any(scope is None for scope in newer):
        return gen, None  # missed some (or a plain flush): lift everything
    return gen, frozenset(d for scope in newer for d in scope or ())


_Log = list[tuple[int, "list[str] | None"]]


def _load(raw: bytes | memoryview | None) -> tuple[int, _Log]:
    if not raw:
        return 0, []
    try:
        doc = json.loads(bytes(raw))
        return int(doc["gen"]), [(int(g), None if s is None else [str(d) for d in s]) for g, s in doc["log"]]
    except (ValueError, KeyError, TypeError):
        return 0, []  # unreadable: the next bump starts over
