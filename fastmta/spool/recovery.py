# SPDX-License-Identifier: MIT
"""Start-up scan: check every envelope, repair the schedule index, quarantine damage.

Runs once, synchronously, before the committer starts. It streams (a cursor over
the envelope and schedule databases, never the bodies), keeps only the handful of
keys it must change, and checks records by version byte and CRC rather than by
decoding them, so a million queued messages take seconds and little memory. A
damaged envelope is logged, moved to the ``quar`` database with its body kept, and
counted; it never stops the start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import cast

from fastmta import metrics
from fastmta.spool import ops, records
from fastmta.spool.ids import ID_LEN
from fastmta.spool.store import Store, sched_key

log = logging.getLogger("fastmta.spool")


@dataclass
class RecoveryReport:
    messages: int = 0
    quarantined: int = 0
    orphan_schedule: int = 0
    rescheduled: int = 0


def recover(store: Store) -> RecoveryReport:
    """Check the spool; return what was found and fixed."""
    rep = RecoveryReport()
    bad: list[bytes] = []
    missing: list[bytes] = []
    with store.read() as txn:
        sched = txn.cursor(store.sched)
        for k, value in txn.cursor(store.envs).iternext():
            key = cast(bytes, k)
            if len(key) != ID_LEN or not records.check(value):
                bad.append(key)
                continue
            rep.messages += 1
            if not sched.set_key(sched_key(records.next_attempt_of(value), key)):
                missing.append(key)
        gone = set(bad)  # a quarantined envelope's schedule entry is an orphan too
        orphans = [
            k for k in txn.cursor(store.sched).iternext(values=False)
            if len(k) != 8 + ID_LEN or k[8:] in gone or txn.get(k[8:], db=store.envs) is None
        ]  # fmt: skip
    if not (bad or missing or orphans):
        return rep
    # Another worker's writer may have changed things since the scan: recheck each
    # key inside the write transaction and change only what is still wrong.
    with store.write() as txn:
        moved = set()
        for key in bad:
            raw = txn.get(key, db=store.envs)
            if raw is not None and not (len(key) == ID_LEN and records.check(raw)):
                log.error("spool: damaged envelope %r moved to quarantine", key)
                ops.quarantine(store, txn, key)
                moved.add(key)
        rep.quarantined = len(moved)
        for key in missing:
            raw = txn.get(key, db=store.envs)
            if raw is not None:
                rep.rescheduled += txn.put(sched_key(records.next_attempt_of(raw), key), b"", db=store.sched)
        for k in orphans:
            if len(k) != 8 + ID_LEN or k[8:] in moved or txn.get(k[8:], db=store.envs) is None:
                rep.orphan_schedule += txn.delete(k, db=store.sched)
    if rep.quarantined:
        metrics.spool_quarantined_total.inc(rep.quarantined)
    if rep.rescheduled or rep.orphan_schedule:
        log.warning("spool: schedule index repaired (%d added, %d orphans removed)",
                    rep.rescheduled, rep.orphan_schedule)  # fmt: skip
    return rep
