# SPDX-License-Identifier: MIT
"""Administrative suspensions of destinations (the HTTP API's ``/api/v1/suspend``).

An operator stops delivery to a domain for a while: mail for it stays queued,
new mail is accepted and queued too, nothing is attempted until the suspension
ends or is lifted. The record is one key in the spool's ``meta`` database, so it
survives a restart and every process of the node sees it: the API writes it into
every shard, and each scheduler's feeder reads it once per pass (as it reads the
``queue flush`` signal, flush.py) and applies what changed.

Value: JSON ``{"domain": [until (epoch seconds), "reason"], ...}``; entries past
their end are dropped whenever the record is written.
"""

from __future__ import annotations

import json
import time

import lmdb

KEY = b"suspend"
MAX_REASON = 200
MAX_ENTRIES = 10_000

Suspensions = dict[str, tuple[float, str]]


def load(raw: bytes | memoryview | None, now: float | None = None) -> Suspensions:
    """The suspensions still running at ``now`` (an unreadable record counts as none)."""
    if not raw:
        return {}
    now = time.time() if now is None else now
    try:
        doc = json.loads(bytes(raw))
        out = {str(d): (float(v[0]), str(v[1])) for d, v in doc.items()}
    except (ValueError, TypeError, IndexError, AttributeError):
        return {}
    return {d: v for d, v in out.items() if v[0] > now}


def _save(txn: lmdb.Transaction, meta: lmdb._Database, entries: Suspensions) -> None:
    txn.put(KEY, json.dumps(entries, separators=(",", ":")).encode(), db=meta)


def add(txn: lmdb.Transaction, meta: lmdb._Database, domain: str, until: float, reason: str) -> None:
    """Suspend ``domain`` until ``until`` (inside the caller's write transaction)."""
    entries = load(txn.get(KEY, db=meta))
    if domain not in entries and len(entries) >= MAX_ENTRIES:
        raise ValueError(f"more than {MAX_ENTRIES} suspended domains")
    entries[domain] = (until, reason[:MAX_REASON])
    _save(txn, meta, entries)


def remove(txn: lmdb.Transaction, meta: lmdb._Database, domain: str) -> bool:
    """Lift the suspension of ``domain``; False if it had none."""
    entries = load(txn.get(KEY, db=meta))
    found = entries.pop(domain, None) is not None
    _save(txn, meta, entries)
    return found
