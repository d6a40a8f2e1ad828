# SPDX-License-Identifier: MIT
"""Spool room: live data, free pages and high water measured on a real LMDB; the refusal edges."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from fastmta.config import SpoolConfig
from fastmta.spool.committer import FULL_HOLD, Committer
from fastmta.spool.space import MIN_FREE_DISK, NEARLY_FULL, Space, shortage
from fastmta.spool.store import Store
from fastmta.spool.writer import FULL

MIB = 1024**2


def space(high_water: int, free: int, max_map: int = 100 * MIB, disk_free: int = -1,
          disk_size: int = -1) -> Space:  # fmt: skip
    return Space(high_water - free, free, high_water, max_map, max_map, disk_free, disk_size)


def test_map_room_counts_free_pages_at_and_past_the_edge() -> None:
    edge = round(NEARLY_FULL * 100 * MIB)  # high water at 95 % of the ceiling
    assert shortage(space(edge, 0)) == "spool nearly full"
    assert shortage(space(edge - 4096, 0)) is None
    assert shortage(space(100 * MIB, 5 * MIB)) == "spool nearly full"  # room exactly 5 %
    assert shortage(space(100 * MIB, 5 * MIB + 4096)) is None  # free pages are room
    assert shortage(space(100 * MIB, 99 * MIB)) is None  # drained after a fill to the ceiling


def test_disk_room_counts_free_pages_at_and_past_the_edge() -> None:
    small = 48 * MIB  # floor: 5 % of a small disk
    floor = small // 20
    assert shortage(space(40 * MIB, 0, disk_free=floor - 1, disk_size=small)) == "disk nearly full"
    assert shortage(space(40 * MIB, 0, disk_free=floor, disk_size=small)) is None
    assert shortage(space(40 * MIB, 1, disk_free=floor - 1, disk_size=small)) is None  # a free page is room
    assert shortage(space(40 * MIB, 39 * MIB, disk_free=0, disk_size=small)) is None  # drained, disk full
    big = 100 * 1024**3  # floor: MIN_FREE_DISK on a big disk
    low = space(MIB, 0, max_map=big, disk_free=MIN_FREE_DISK - 1, disk_size=big)
    assert shortage(low) == "disk nearly full"
    assert shortage(low._replace(disk_free=MIN_FREE_DISK)) is None
    assert shortage(space(MIB, 0, disk_free=0, disk_size=-1)) is None  # filesystem not asked


def test_measure_sees_deleted_pages_as_free(tmp_path: Path) -> None:
    store = Store(str(tmp_path), 16 * MIB, 16 * MIB)
    try:
        empty = store.space(disk=True)
        assert 0 < empty.live <= empty.high_water and empty.disk_size > 0
        with store.write() as txn:
            for i in range(200):
                txn.put(b"%016d" % i, b"x" * 20_000, db=store.bodies)
        full = store.space()
        assert full.live > 200 * 20_000 and full.free < full.live // 10
        with store.write() as txn:
            for i in range(200):
                txn.delete(b"%016d" % i, db=store.bodies)
        drained = store.space()
        assert drained.high_water >= full.high_water  # the file never shrinks…
        assert drained.live < 10 * store.page_size and drained.free > 200 * 20_000  # …its pages are free
        assert drained.live + drained.free == drained.high_water
        assert shortage(drained._replace(max_map_size=full.high_water)) is None
    finally:
        store.close()


def test_a_failed_put_holds_until_more_room_is_measured() -> None:
    """After a put failed for space the committer refuses for FULL_HOLD seconds, unless the
    writer measures more room first (a drain): then it takes mail at once."""
    loop = asyncio.new_event_loop()
    try:
        c = Committer(SpoolConfig(path="unused"), loop, lambda batch, results: None)
        full = space(96 * MIB, 0)
        c._acked({"space": full, "results": [(1, FULL, "")], "seconds": 0.001, "ops": 1})
        assert c.shortage == "spool nearly full" and c.full_until > time.monotonic() + FULL_HOLD - 1
        c._acked({"space": full, "results": []})  # an idle measurement, nothing new: still held
        assert c.full_until > 0
        c._acked({"space": space(96 * MIB, 90 * MIB), "results": []})  # drained
        assert c.shortage is None and c.full_until == 0
    finally:
        loop.close()
