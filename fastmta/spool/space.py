# SPDX-License-Identifier: MIT
"""How much room the spool has left, and whether new mail must wait for more.

``data.mdb`` never shrinks: LMDB keeps the pages a deleted message held as free
pages inside the file and reuses them before it writes past its high-water
mark. So neither the high-water mark nor the filesystem's free space alone says
whether a message fits: a spool that once filled its disk, or reached 95 % of
``max_map_size``, has as much room again as its queue has drained. Room is

* in the map: ``max_map_size`` − high water + free pages;
* on the disk: the filesystem's free space + free pages.

Free pages are counted as the pages inside the high-water mark that no database
holds (LMDB does not expose its freelist): the few pages of the freelist itself
and pages an old reader still sees count as free too, a slight overestimate a
commit that then fails for space answers with 452 as before.

The writer process measures after commits and while idle (``measure``, a read
transaction and a ``statvfs``, ~15 µs); the serving process only compares the
figures it was sent (``shortage``), so asking is free.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import lmdb

NEARLY_FULL = 0.95  # of the map ceiling: refuse new mail before a commit can fail
MIN_FREE_DISK = 256 * 1024**2  # refuse new mail below this room on disk (or 5 % of a small disk)
META_PAGES = 2  # LMDB's two meta pages, in use whatever the databases hold


class Space(NamedTuple):
    """One measurement, in bytes (disk figures -1 when the filesystem could not be asked)."""

    live: int  # pages holding data: every database's pages and the meta pages
    free: int  # pages below the high-water mark that LMDB reuses before the file grows
    high_water: int  # up to LMDB's last page: data.mdb is never shorter
    map_size: int  # the map now (it grows by itself up to max_map_size)
    max_map_size: int
    disk_free: int = -1  # the filesystem's free space for this user (statvfs f_bavail)
    disk_size: int = -1

    def map_room(self) -> int:
        """Bytes new data can still take in the map, up to its ceiling."""
        return self.max_map_size - self.high_water + self.free

    def disk_room(self) -> int:
        """Bytes new data can take on disk: the filesystem's free space plus the file's free pages."""
        return self.disk_free + self.free


def pages(env: lmdb.Environment, txn: lmdb.Transaction, dbs: list[Any]) -> tuple[int, int, int]:
    """(live pages, high-water pages, page size) of an environment, ``dbs`` its named databases."""
    main = env.stat()  # the main database: it names the others
    live = META_PAGES
    for st in (main, *(txn.stat(db) for db in dbs)):
        live += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
    return live, int(env.info()["last_pgno"]) + 1, int(main["psize"])


def measure(env: lmdb.Environment, txn: lmdb.Transaction, dbs: list[Any],
            max_map_size: int, path: str | None = None) -> Space:  # fmt: skip
    """The spool's space now; ``path`` given: with its filesystem's free space."""
    live, high, psize = pages(env, txn, dbs)
    live = min(live, high)  # info() may be a commit newer than txn: never report negative free
    disk_free = disk_size = -1
    if path is not None:
        try:
            st = os.statvfs(path)
            disk_free, disk_size = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
        except OSError:
            pass
    map_size = int(env.info()["map_size"])
    return Space(live * psize, (high - live) * psize, high * psize, map_size,
                 max(max_map_size, map_size), disk_free, disk_size)  # fmt: skip


def shortage(space: Space) -> str | None:
    """Why new mail must wait for room (452 4.3.1), or None."""
    if space.map_room() <= (1 - NEARLY_FULL) * space.max_map_size:
        return "spool nearly full"
    if space.disk_size >= 0 and space.disk_room() < min(MIN_FREE_DISK, space.disk_size // 20):
        return "disk nearly full"
    return None


def space_stats(*spaces: Space) -> dict[str, float]:
    """The metrics exporter's spool figures, summed over ``spaces`` (one per shard)."""
    return {
        "used_bytes": float(sum(s.live for s in spaces)),
        "free_bytes": float(sum(s.free for s in spaces)),
        "high_water_bytes": float(sum(s.high_water for s in spaces)),
        "map_size_bytes": float(sum(s.map_size for s in spaces)),
    }
