# SPDX-License-Identifier: MIT
"""Worker configuration shares and spool shards, without starting a server."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from fastmta import config
from fastmta.config import ShapingRule, SpoolConfig
from fastmta.node.worker import share, worker_config
from fastmta.spool import admin, records, shards
from fastmta.spool.ids import new_id
from fastmta.spool.records import Envelope, Recipient
from fastmta.spool.store import Store, body_items, sched_key

BIG = 3 * 1024 * 1024 + 17  # several body pieces


def test_share_is_the_ceiling_and_never_zero() -> None:
    assert [share(t, 2) for t in (1, 2, 3, 20, 21)] == [1, 1, 2, 10, 11]
    assert share(200, 3) == 67
    assert share(1, 8) == 1


def test_worker_config_divides_node_wide_limits() -> None:
    base = config.from_dict(
        {
            "server": {"workers": 2},
            "limits": {"max_connections": 101, "max_connections_per_ip": 5},
            "spool": {"path": "/var/spool/fastmta"},
            "delivery": {"max_connections_per_destination": 20, "message_rate_per_destination": 10},
        }
    )
    base = dataclasses.replace(
        base,
        delivery=dataclasses.replace(
            base.delivery, shaping=(ShapingRule(re.compile("x"), "limit", 60.0, 3, 4.0),)
        ),
    )
    w = worker_config(base, 1, 2)
    assert w.spool.path == "/var/spool/fastmta/1"
    assert w.metrics.address is None  # the supervisor exports for everyone
    assert (w.limits.max_connections, w.limits.max_connections_per_ip) == (51, 3)
    assert w.delivery.max_connections_per_destination == 10
    assert w.delivery.message_rate_per_destination == 5.0
    assert (w.delivery.shaping[0].max_connections, w.delivery.shaping[0].message_rate) == (2, 2.0)
    assert w.listeners == base.listeners and w.policy == base.policy


def test_one_worker_keeps_the_spool_path() -> None:
    cfg = SpoolConfig(path="/s")
    assert shards.shard_config(cfg, 0, 1) is cfg
    assert shards.shard_config(cfg, 3, 4).path == "/s/3"


def test_injection_picks_a_shard_by_pid() -> None:
    cfg = config.from_dict({"server": {"workers": 3}, "spool": {"path": "/s"}})
    assert shards.injection_config(cfg).path == f"/s/{os.getpid() % 3}"
    one = config.from_dict({"spool": {"path": "/s"}})
    assert shards.injection_config(one).path == "/s"


def _fill(path: Path, n: int, body: bytes = b"Subject: x\r\n\r\nhi\r\n") -> list[str]:
    store = Store(str(path), 64 * 1024**2, 1024**3)
    ids = []
    try:
        with store.write() as txn:
            for _ in range(n):
                msg_id = new_id()
                id_b = msg_id.encode()
                env = Envelope(msg_id, "a@x.test", [Recipient("b@y.test")], arrived=1.0, size=len(body),
                               next_attempt=2.0)  # fmt: skip
                store.put_many(txn, [(id_b, records.encode(env))], body_items(id_b, body),
                               [(sched_key(2.0, id_b), b"")])  # fmt: skip
                ids.append(msg_id)
    finally:
        store.close()
    return ids


def test_present_lists_top_level_and_numbered_shards_only(tmp_path: Path) -> None:
    _fill(tmp_path, 1)
    _fill(tmp_path / "0", 1)
    _fill(tmp_path / "12", 1)
    os.makedirs(tmp_path / "07")  # not a shard name
    os.makedirs(tmp_path / "3")  # no environment in it
    found = shards.present(SpoolConfig(path=str(tmp_path)))
    assert [i for i, _ in found] == [None, 0, 12]


def test_adopt_orphans_moves_whole_messages(tmp_path: Path) -> None:
    cfg = SpoolConfig(path=str(tmp_path))
    big = b"Subject: big\r\n\r\n" + b"y" * BIG
    keep = _fill(tmp_path / "1", 2)
    orphan = _fill(tmp_path / "3", 3, big)  # 3 mod 2 = shard 1
    legacy = _fill(tmp_path, 2)  # a single-process spool → shard 0
    assert shards.adopt_orphans(cfg, 2) == 5
    stores = shards.open_all(cfg)
    try:
        by_path = {s.path: s for s in stores}
        one, zero, top = by_path[str(tmp_path / "1")], by_path[str(tmp_path / "0")], by_path[str(tmp_path)]
        assert {e.id for e in admin.iter_envelopes(one)} == set(keep + orphan)
        assert {e.id for e in admin.iter_envelopes(zero)} == set(legacy)
        assert not list(admin.iter_envelopes(top)) and not list(
            admin.iter_envelopes(by_path[str(tmp_path / "3")])
        )
        assert one.body(orphan[0].encode()) == big
        assert {i for _, i in one.due(10.0, 100)} == set(keep + orphan)  # still scheduled, once each
        assert len(one.due(10.0, 100)) == 5
        assert top.due(10.0, 100) == [] and top.body(legacy[0].encode()) is None
        merged = [e.id for e in shards.iter_envelopes(stores)]
        assert merged == sorted(keep + orphan + legacy)
        assert shards.merged_stats(stores).messages == 7
    finally:
        for s in stores:
            s.close()
    assert shards.adopt_orphans(cfg, 2) == 0  # nothing left to move


def test_back_to_one_worker_gathers_every_shard(tmp_path: Path) -> None:
    cfg = SpoolConfig(path=str(tmp_path))
    ids = _fill(tmp_path / "0", 2) + _fill(tmp_path / "1", 2)
    assert shards.adopt_orphans(cfg, 1) == 4
    store = admin.open_store(cfg)
    try:
        assert sorted(e.id for e in admin.iter_envelopes(store)) == sorted(ids)
    finally:
        store.close()


def test_usage_sums_every_shard(tmp_path: Path) -> None:
    _fill(tmp_path / "0", 1)
    _fill(tmp_path / "1", 1)
    u = shards.usage(SpoolConfig(path=str(tmp_path)))
    assert u["map_size_bytes"] == 2 * 64 * 1024**2
    assert 0 < u["used_bytes"] < u["map_size_bytes"]
    assert u["free_bytes"] >= 0 and u["high_water_bytes"] >= u["used_bytes"]


def test_auto_is_the_cpu_count() -> None:
    assert config.from_dict({"server": {"workers": "auto"}}).server.workers == (os.cpu_count() or 1)


def test_worker_identity_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastmta.node import supervisor

    monkeypatch.delenv(supervisor.WORKER_ENV, raising=False)
    assert supervisor.worker_identity() is None
    monkeypatch.setenv(supervisor.WORKER_ENV, "1/4/9")
    assert supervisor.worker_identity() == (1, 4, 9)


def test_stdout_relay_only_for_pipes_and_sockets(tmp_path: Path) -> None:
    import socket

    from fastmta.node.supervisor import _is_stream

    r, w = os.pipe()
    a, b = socket.socketpair()
    with open(tmp_path / "f", "w") as f, a, b:
        assert _is_stream(w) and _is_stream(a.fileno())
        assert not _is_stream(f.fileno()) and not _is_stream(987654)
    os.close(r)
    os.close(w)
