# SPDX-License-Identifier: MIT
"""The node side of the shared suppression list: the outbox written with every change,
other nodes' changes applied last writer wins, and the wire format of a change
(Hypothesis: round trip, junk never raises)."""

from __future__ import annotations

import time
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from fastmta.cluster.suppression import decode, encode
from fastmta.spool import suppression
from fastmta.spool.store import Store
from fastmta.spool.suppression import Entry


def store_at(tmp: Path) -> Store:
    return Store(str(tmp / "list"), 16 * 1024**2, 64 * 1024**2)


def test_every_change_goes_to_the_outbox_in_its_transaction(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    try:
        db, out = suppression.open_db(store), suppression.open_outbox(store)
        suppression.add(store, db, [Entry("alone@a.test")])  # not shared: no outbox record
        assert suppression._outgoing(store, out, 10) == []
        suppression.add(store, db, [Entry("Bob@A.test", "t1", "complaint", time=1.5)], out)
        assert suppression.remove(store, db, ["nobody@a.test"], "", out) == 0  # still published
        changes = [c for _, _, c in suppression._outgoing(store, out, 10)]
        assert changes[0] == (suppression.key("bob@a.test", "t1"), 1500, False, "complaint")
        assert changes[1][0] == suppression.key("nobody@a.test") and changes[1][2]
        assert abs(changes[1][1] - time.time() * 1000) < 60_000
        done = suppression._outgoing(store, out, 1)
        suppression._published(store, out, done)
        assert [c for _, _, c in suppression._outgoing(store, out, 10)] == changes[1:]
    finally:
        store.close()


def test_other_nodes_changes_apply_last_writer_wins(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    k = suppression.key("x@a.test")
    try:
        db = suppression.open_db(store)
        assert suppression.apply(store, db, [(k, 2000, False, "first")], b"1-0") == 1
        assert suppression.apply(store, db, [(k, 2000, False, "first")]) == 0  # again: nothing
        assert suppression.apply(store, db, [(k, 1000, False, "older")]) == 0
        assert suppression.apply(store, db, [(k, 1999, True, "")]) == 0  # a removal older than the entry
        hit = suppression.lookup(store, db, "x@a.test")
        assert hit is not None and (hit.reason, hit.time) == ("first", 2.0)
        assert suppression.apply(store, db, [(k, 2000, True, "")], b"2-0") == 1  # a tie: removal wins
        assert suppression.lookup(store, db, "x@a.test") is None
        assert suppression._cursor(store) == b"2-0"
        long = "r" * (suppression.MAX_REASON + 1)
        suppression.apply(store, db, [(k, 3000, False, long)])
        hit = suppression.lookup(store, db, "x@a.test")
        assert hit is not None and len(hit.reason) == suppression.MAX_REASON
    finally:
        store.close()


KEYS = st.builds(lambda t, a: t + b"\x00" + a, st.binary(max_size=20), st.binary(min_size=1, max_size=40))


@given(KEYS, st.integers(0, 2**53), st.booleans(), st.text(max_size=50))
def test_a_change_survives_its_wire_format(k: bytes, ms: int, removed: bool, reason: str) -> None:
    change = (k, ms, removed, "" if removed else reason.encode("utf-8", "replace").decode())
    assert decode(k, encode(change)) == change


@given(st.one_of(st.binary(), st.none(), st.text()), st.one_of(st.binary(), st.none(), st.integers()))
def test_junk_from_redis_is_no_change_and_no_error(k: object, v: object) -> None:
    c = decode(k, v)
    assert c is None or (isinstance(c[0], bytes) and c[1] >= 0)
