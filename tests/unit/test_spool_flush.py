# SPDX-License-Identifier: MIT
"""The ``queue flush`` signal in the spool's meta database (spool/flush.py), on a real LMDB file."""

from __future__ import annotations

from pathlib import Path

from fastmta.spool import admin, flush
from fastmta.spool.store import Store


def _raw(store: Store) -> bytes | None:
    with store.read() as txn:
        raw = txn.get(flush.KEY, db=store.meta)
        return None if raw is None else bytes(raw)


def test_generations_scopes_and_a_reader_that_fell_behind(tmp_path: Path) -> None:
    store = Store(str(tmp_path), 1024**2, 8 * 1024**2)
    try:
        assert flush.since(_raw(store), 0) == (0, frozenset())  # never flushed
        admin.signal_flush(store, ["A.test."])
        admin.signal_flush(store, ["b.test", "a.test"])
        assert flush.since(_raw(store), 0) == (2, frozenset({"a.test", "b.test"}))
        assert flush.since(_raw(store), 1) == (2, frozenset({"a.test", "b.test"}))
        assert flush.since(_raw(store), 2) == (2, frozenset())  # nothing new
        admin.signal_flush(store, None)
        assert flush.since(_raw(store), 2) == (3, None)  # a plain flush: every destination
        for _ in range(flush.KEEP):
            admin.signal_flush(store, ["c.test"])
        assert flush.since(_raw(store), 3 + flush.KEEP - 1) == (3 + flush.KEEP, frozenset({"c.test"}))
        assert flush.since(_raw(store), 3) == (3 + flush.KEEP, frozenset({"c.test"}))
        assert flush.since(_raw(store), 2) == (3 + flush.KEEP, None)  # missed some: everything
        admin.signal_flush(store, [f"d{i}.test" for i in range(flush.MAX_DOMAINS + 1)])
        assert flush.since(_raw(store), 3 + flush.KEEP)[1] is None  # too many to list: everything
    finally:
        store.close()


def test_unreadable_value_reads_as_never_flushed() -> None:
    assert flush.since(b"not json", 0) == (0, frozenset())
