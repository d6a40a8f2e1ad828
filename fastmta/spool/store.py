# SPDX-License-Identifier: MIT
"""The LMDB environment, its named databases, the key schema and map growth.

All synchronous. Keys:

* ``env``   id → envelope record (records.py)
* ``body``  id + piece number (2 bytes, big-endian) → a piece of the body. Big
  bodies are split into ~1 MiB pieces so LMDB never needs one huge run of
  contiguous free pages; every piece but a short tail fills its overflow pages
  exactly (n pages − 16 header bytes), so a 4 KiB body takes one page, not two
* ``sched`` due time in ms (8 bytes, big-endian) + id → b"": ``due()`` is a range scan
* ``quar``  id → damaged envelope record moved aside (by recovery, or when a read finds it)
* ``meta``  spool-wide facts: the schema version, the ``queue flush`` signal (flush.py),
  administrative suspensions (suspend.py) and the webhooks' cursors (events.py)
* ``events`` sequence number → a delivery-log event kept for the webhooks (events.py)

Write transactions run on one thread per process (the writer process, recovery
and shard adoption before it starts, or a short ``fastmta queue`` command).
``set_mapsize`` needs every transaction of this process closed, so readers hold
``lock`` for their (short) read transactions and the resizer takes it too.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import mmap
import os
import struct
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar, cast

import lmdb

from fastmta.spool.ids import ID_LEN
from fastmta.spool.space import Space, measure

T = TypeVar("T")

PAGE = mmap.PAGESIZE  # LMDB's page size is the OS page size
CHUNK = 256 * PAGE - 16  # a full piece: 256 overflow pages, header included
_INLINE_TAIL = PAGE // 4  # a tail this short sits inside a leaf page, not an overflow page
SCHEMA = b"1"
DB_NAMES = (b"env", b"body", b"sched", b"quar", b"meta", b"events")
_DUE = struct.Struct(">Q")
_CHUNK_NO = struct.Struct(">H")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)


def sched_key(due: float, id_b: bytes) -> bytes:
    """Schedule-index key: big-endian milliseconds, then the id (sorts by time, then id)."""
    # round(), not int(): split_sched_key's float must map back to the same key, or a
    # due() page that continues "after" it would return its last entry again.
    return _DUE.pack(max(0, round(due * 1000))) + id_b


def split_sched_key(key: bytes) -> tuple[float, str]:
    return _DUE.unpack_from(key)[0] / 1000.0, key[8:].decode("ascii")


def _cuts(n: int) -> list[int]:
    """Piece boundaries for an ``n``-byte body (see the module docstring)."""
    cuts = list(range(CHUNK, n, CHUNK))
    start = cuts[-1] if cuts else 0
    rest = n - start
    head = (rest + 16) // PAGE * PAGE - 16  # what fills whole overflow pages
    if 0 < rest - head <= _INLINE_TAIL and head > _INLINE_TAIL:
        cuts.append(start + head)
    return cuts


def body_items(id_b: bytes, body: bytes | memoryview) -> list[tuple[bytes, bytes | memoryview]]:
    """The (key, value) pairs storing one body."""
    cuts = _cuts(len(body))
    if not cuts:
        return [(id_b + b"\x00\x00", body)]
    view = memoryview(body)
    bounds = [0, *cuts, len(body)]
    return [(id_b + _CHUNK_NO.pack(i), view[a:b]) for i, (a, b) in enumerate(itertools.pairwise(bounds))]


def is_no_space(exc: BaseException) -> bool:
    """A write failed because the disk (or quota, or file size limit) is full.

    LMDB reports a short ``pwrite`` (what a filling disk gives) as EIO, so EIO on a
    write counts too: either way the message cannot be taken now (452 4.3.1).
    """
    code = getattr(exc, "errno", None)
    if code in _NO_SPACE:
        return True
    text = str(exc)
    return any(os.strerror(c) in text for c in _NO_SPACE)


def _round_mib(n: int) -> int:
    return -(-n // 1024**2) * 1024**2


def ensure_dir(path: str) -> None:
    """Create the spool directory 0700 (umask-independent) and tighten an existing one."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


class Store:
    """One open LMDB environment with fastmta's databases."""

    def __init__(self, path: str, map_size: int, max_map_size: int, sync: bool = True) -> None:
        ensure_dir(path)
        self.path = path
        self.max_map_size = max(max_map_size, map_size)
        self.lock = threading.Lock()
        self.env = lmdb.open(
            path, map_size=map_size, max_dbs=8, subdir=True, sync=sync, metasync=sync,
            readahead=False, meminit=False, max_readers=1024, mode=0o600,
        )  # fmt: skip
        for name in ("data.mdb", "lock.mdb"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(os.path.join(path, name), 0o600)
        try:
            self._open_dbs()
        except BaseException:
            self.env.close()
            raise
        self.page_size = self.env.stat()["psize"]
        # Reader slots of processes killed mid-read pin old pages (the file only
        # grows) until cleared; a crash is exactly when we are opened again.
        self.env.reader_check()

    def _open_dbs(self) -> None:
        with self.write() as txn:  # another process may have grown the map: write() adopts it
            self.dbs = [self.env.open_db(name, txn=txn) for name in DB_NAMES]
            self.envs, self.bodies, self.sched, self.quar, self.meta, self.events = self.dbs
            schema = txn.get(b"schema", db=self.meta)
            if schema is None:
                txn.put(b"schema", SCHEMA, db=self.meta)
            elif schema != SCHEMA:  # a newer fastmta wrote it: never guess at its layout
                raise lmdb.Error(f"spool schema {bytes(schema)!r} is not {SCHEMA!r}: wrong fastmta version")

    # --- transactions ---------------------------------------------------------

    @contextlib.contextmanager
    def read(self) -> Iterator[lmdb.Transaction]:
        """A short read transaction (adopts a map grown by another process)."""
        with self.lock:
            try:
                txn = self.env.begin()
            except lmdb.MapResizedError:
                self.env.set_mapsize(0)
                txn = self.env.begin()
            try:
                yield txn
            finally:
                txn.abort()

    @contextlib.contextmanager
    def write(self) -> Iterator[lmdb.Transaction]:
        """A write transaction, committed (fsync'd) on success, aborted on error."""
        try:
            txn = self.env.begin(write=True)
        except lmdb.MapResizedError:
            with self.lock:
                self.env.set_mapsize(0)
            txn = self.env.begin(write=True)
        try:
            yield txn
        except BaseException:
            txn.abort()
            raise
        txn.commit()

    def write_growing(self, work: Callable[[lmdb.Transaction], T], need: int = 0) -> T:
        """``work`` in a write transaction, rerun after growing the map while it is full."""
        while True:
            try:
                with self.write() as txn:
                    return work(txn)
            except lmdb.MapFullError:
                if not self.grow(need):
                    raise

    # --- size ------------------------------------------------------------------

    def map_size(self) -> int:
        return int(self.env.info()["map_size"])

    def high_water(self) -> int:
        """Bytes up to LMDB's last page (data.mdb is at least this long; space.py)."""
        return (int(self.env.info()["last_pgno"]) + 1) * self.page_size

    def space(self, disk: bool = False) -> Space:
        """Live data, free pages, high water and map size (``disk``: and the filesystem's room)."""
        with self.read() as txn:
            return measure(self.env, txn, self.dbs, self.max_map_size, self.path if disk else None)

    def grow(self, need: int = 0) -> bool:
        """Enlarge the map (no transaction of this process may be open); False at the ceiling."""
        cur = self.map_size()
        if cur >= self.max_map_size:
            return False
        new = min(self.max_map_size, _round_mib(max(cur * 2, cur + 2 * need)))
        with self.lock:
            self.env.set_mapsize(new)
        return True

    # --- reads -----------------------------------------------------------------

    def envelope_raw(self, id_b: bytes) -> bytes | None:
        with self.read() as txn:
            return cast("bytes | None", txn.get(id_b, db=self.envs))

    def body(self, id_b: bytes) -> bytes | None:
        with self.read() as txn:
            cur = txn.cursor(self.bodies)
            if not cur.set_key(id_b + b"\x00\x00"):
                return None
            parts: list[bytes] = [cast(bytes, cur.value())]
            while cur.next() and cur.key()[:ID_LEN] == id_b:
                parts.append(cast(bytes, cur.value()))
            return parts[0] if len(parts) == 1 else b"".join(parts)

    def due(self, now: float, limit: int, after: tuple[float, str] | None = None) -> list[tuple[float, str]]:
        hi = _DUE.pack(max(0, int(now * 1000)))
        start = sched_key(after[0], after[1].encode()) if after else b""
        out: list[tuple[float, str]] = []
        with self.read() as txn:
            cur = txn.cursor(self.sched)
            if not cur.set_range(start):
                return out
            for k in cur.iternext(values=False):
                key = cast(bytes, k)
                if key[:8] > hi:
                    break
                if key == start:
                    continue
                out.append(split_sched_key(key))
                if len(out) >= limit:
                    break
        return out

    # --- writes (inside a write transaction) -------------------------------------

    def put_many(
        self,
        txn: lmdb.Transaction,
        envs: list[tuple[bytes, bytes | memoryview]],
        bodies: list[tuple[bytes, bytes | memoryview]],
        sched: list[tuple[bytes, bytes]],
    ) -> None:
        """A whole batch in three C-level loops (one ``putmulti`` per database)."""
        txn.cursor(self.envs).putmulti(envs)
        txn.cursor(self.bodies).putmulti(bodies)
        txn.cursor(self.sched).putmulti(sched)

    def delete_message(self, txn: lmdb.Transaction, id_b: bytes, next_attempt: float | None) -> None:
        """Remove envelope, schedule entry and every body chunk of one message."""
        txn.delete(id_b, db=self.envs)
        if next_attempt is not None:
            txn.delete(sched_key(next_attempt, id_b), db=self.sched)
        cur = txn.cursor(self.bodies)
        if cur.set_range(id_b):
            while cur.key()[:ID_LEN] == id_b:
                if not cur.delete():
                    break

    def close(self) -> None:
        with self.lock:
            self.env.close()
            self.env = None  # type: ignore[assignment]
