# SPDX-License-Identifier: MIT
"""Pure pieces of sending pools and feedback loops: source choice, the complaint token, the
suppression list's storage (on a real LMDB environment in tmp_path)."""

from __future__ import annotations

import collections
import os
import stat
from pathlib import Path

from fastmta.config import SpoolConfig, from_dict
from fastmta.delivery import Destination, ref
from fastmta.delivery.sources import Sources, base_key
from fastmta.spool import suppression
from fastmta.spool.store import Store
from fastmta.spool.suppression import Entry, SuppressionList

M3, M4 = {"address": "127.0.0.3", "ehlo": "m3.test"}, {"address": "127.0.0.4", "ehlo": "m4.test", "weight": 2}
M5 = {"address": "127.0.0.5", "ehlo": "m5.test"}
CFG = from_dict({"pool": [
    {"name": "bulk", "sender_domains": ["news.test"], "sources": [M3, M4]},
    {"name": "tx", "sender_domains": ["news.test", "tx.test"], "sources": [M5]},
]})  # fmt: skip


def test_pool_of_a_message() -> None:
    s = Sources(CFG)
    assert s.pool_of("tx", "a@news.test") == "tx"  # the stored header choice wins
    assert s.pool_of("", "a@NEWS.test") == "bulk"  # else the first pool holding the sender domain
    assert s.pool_of("", "a@tx.test") == "tx"
    assert s.pool_of("gone", "a@other.test") == "default"  # a pool removed since: the default
    assert s.pick("default") is None


def test_smooth_weighted_round_robin() -> None:
    s = Sources(CFG)
    seq = [s.pick("bulk").address for _ in range(9)]  # type: ignore[union-attr]
    assert collections.Counter(seq) == {"127.0.0.3": 3, "127.0.0.4": 6}
    assert "127.0.0.4" * 3 not in "".join(seq)  # interleaved, no long runs


def test_bound_destinations_are_per_source_and_cached() -> None:
    s = Sources(CFG)
    dest = Destination("a.test", "a.test")
    a, b = CFG.pools[0].sources
    da, db = s.bind(dest, "bulk", a), s.bind(dest, "bulk", b)
    assert da.key != db.key and da is s.bind(dest, "bulk", a)
    assert base_key(da) == base_key(db) == "a.test" and da.pool == "bulk" and da.source is a
    assert s.bind(dest, "default", None).key == "a.test"


def test_token_round_trip_and_forgeries() -> None:
    signer = ref.Signer(b"k" * 32)
    tok = signer.token("ID1", "Bob@a.test", "shop1").decode()
    assert signer.verify(tok) == ref.Ref("ID1", "Bob@a.test", "shop1")
    data, tag = tok.split(".")
    assert signer.verify(data + "." + tag[::-1]) is None
    assert signer.verify(signer.token("ID1", "x@a.test", "").decode().split(".")[0] + "." + tag) is None
    assert ref.Signer(b"other key 123456").verify(tok) is None
    for junk in ("", ".", "no-dot", "!!!.???", "a.b.c"):
        assert signer.verify(junk) is None
    assert len(signer.header("0123456789abcdefghij", "someone@example.com", "tenant-1")) < 150


def test_the_key_is_made_once_0600(tmp_path: Path) -> None:
    cfg = from_dict({"spool": {"path": str(tmp_path / "spool")}})
    key = ref.load_key(cfg)
    path = tmp_path / "spool" / ref.KEY_FILE
    assert len(key) == 32 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert ref.load_key(cfg) == key


def test_list_storage(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "spool"), 16 * 1024**2, 64 * 1024**2)
    try:
        db = suppression.open_db(store)
        many = [Entry(f"u{i}@a.test", reason="r") for i in range(2500)]  # listing pages through 1000s
        assert suppression.add(store, db, [*many, Entry(" <Bob@A.test>", "t1", "complaint")]) == 2501
        assert len(list(suppression.entries(store, db))) == 2501
        assert [e.address for e in suppression.entries(store, db, "t1")] == ["bob@a.test"]
        hit = suppression.lookup(store, db, "BOB@a.test", "t1")
        assert hit is not None and (hit.tenant, hit.reason) == ("t1", "complaint")
        assert suppression.lookup(store, db, "bob@a.test") is None  # tenant only, not global
        assert suppression.remove(store, db, ["u7@a.test", "nobody@a.test"]) == 1
    finally:
        store.close()


def test_lookups_of_a_serving_process(tmp_path: Path) -> None:
    cfg = SpoolConfig(path=str(tmp_path / "spool"), map_size=16 * 1024**2)
    store = Store(suppression.node_config(cfg).path, 16 * 1024**2, 64 * 1024**2)
    suppression.add(store, suppression.open_db(store), [Entry("u7@a.test"), Entry("bob@a.test", "t1")])
    store.close()
    lst = SuppressionList.open(cfg)
    try:
        assert lst.suppressed([(0, "U7@a.test"), (1, "bob@a.test"), (2, "x@a.test")], "t1") == [0, 1]
        assert lst.suppressed([(1, "bob@a.test")], "t2") == []
    finally:
        lst.close()


def test_every_worker_reads_the_list_of_the_node(tmp_path: Path) -> None:
    root = SpoolConfig(path=str(tmp_path / "spool"), map_size=16 * 1024**2)
    shard = SpoolConfig(path=str(tmp_path / "spool" / "1"), map_size=16 * 1024**2, node_path=root.path)
    expected = str(tmp_path / "spool" / "suppression")
    assert suppression.node_config(root).path == suppression.node_config(shard).path == expected
