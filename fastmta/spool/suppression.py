# SPDX-License-Identifier: MIT
"""The suppression list: addresses never to be mailed again, globally or for one tenant.

It is the named database ``suppress`` of its own LMDB environment in the spool
directory, ``<[spool] path>/suppression/``: one place for the whole node whatever
``[server] workers`` says (each worker's messages live in ``<path>/<n>/``, a single
process's in ``<path>``), so a change of the worker count strands no entry, and
list writes never wait for (or hold up) the spool writer's group commits. Every
worker, ``fastmta suppress`` and the feedback-loop consumer open it; LMDB makes it
durable and safe across processes. Spool tools that walk the shards ignore it.

Key: ``tenant NUL address`` (tenant "" = global); value: ``time (double) | reason``.
Addresses are compared case-insensitively in full. RFC 5321 §2.4 lets a local part
be case-sensitive, but no mailbox provider in practice distinguishes ``Bob@`` from
``bob@``, and a bounce or complaint for one spelling must stop the other.

A lookup is one ``get`` per recipient (two with a tenant) inside a single read
transaction per message; writes are rare (bounces, complaints, the command) and run
on one background thread, never on the event loop.

Sharing with other nodes (``[cluster] redis``): every local change is also written,
in the same transaction, to the ``suppress_out`` database (the outbox: key
``ms (>Q) | entry key``, value ``+reason`` or ``-``), which the node's sync task
(cluster/suppression.py) publishes and then deletes; so a change made while Redis
is away, or by ``fastmta suppress`` while no server runs, is published later and
never lost. Changes from other nodes come back through ``apply``: last writer wins
by the change's time in milliseconds, and a removal wins a tie. Checks never wait
for any of it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import lmdb

from fastmta.config import SpoolConfig
from fastmta.spool.store import Store

DIR = "suppression"
DB = b"suppress"
OUTBOX = b"suppress_out"
CURSOR = b"suppress_cursor"  # in the environment's meta database: the last change read from Redis
_TIME = struct.Struct("<d")
_MS = struct.Struct(">Q")
MAX_REASON = 500
_PAGE = 1000  # entries per read transaction when listing
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Entry:
    address: str
    tenant: str = ""  # "" = every tenant (global)
    reason: str = ""
    time: float = 0.0


# A change: (entry key, time in ms, removed, reason); an outgoing one also carries the
# outbox record it came from, so that publishing it can delete exactly that record.
Change = tuple[bytes, int, bool, str]
Outgoing = tuple[bytes, bytes, Change]


def normalize(address: str) -> str:
    return address.strip().strip("<>").lower()


def key(address: str, tenant: str = "") -> bytes:
    return (
        tenant.encode("utf-8", "surrogateescape")
        + b"\x00"
        + normalize(address).encode("utf-8", "surrogateescape")
    )


def node_config(cfg: SpoolConfig) -> SpoolConfig:
    """The environment that holds the node's list (see the module docstring)."""
    path = os.path.join(cfg.node_path or cfg.path, DIR)
    return SpoolConfig(path=path, map_size=cfg.map_size, max_map_size=cfg.max_map_size, sync=cfg.sync)


def open_db(store: Store) -> Any:
    """The ``suppress`` database of ``store`` (created on first use)."""
    return store.write_growing(lambda txn: store.env.open_db(DB, txn=txn))


def open_outbox(store: Store) -> Any:
    """The outbox of changes for the other nodes (created on first use)."""
    return store.write_growing(lambda txn: store.env.open_db(OUTBOX, txn=txn))


# --- synchronous operations (commands, the writer thread) ---------------------------------


def add(store: Store, db: Any, entries: Sequence[Entry], outbox: Any = None) -> int:
    """Add or refresh entries (and queue them for the other nodes when ``outbox`` is given);
    the number written."""
    now = time.time()
    items = [
        (key(e.address, e.tenant), _TIME.pack(e.time or now) + e.reason[:MAX_REASON].encode())
        for e in entries
    ]

    def put(txn: lmdb.Transaction) -> int:
        if outbox is not None:
            txn.cursor(outbox).putmulti([(_out_key(v, k), b"+" + v[_TIME.size :]) for k, v in items])
        return int(txn.cursor(db).putmulti(items)[1])

    return store.write_growing(put, 2 * sum(len(k) + len(v) + 8 for k, v in items))


def remove(store: Store, db: Any, addresses: Iterable[str], tenant: str = "", outbox: Any = None) -> int:
    """Lift entries; the number that were on the list. With ``outbox`` every removal is
    queued for the other nodes, on the list here or not."""
    keys = [key(a, tenant) for a in addresses]
    stamp = _TIME.pack(time.time())

    def drop(txn: lmdb.Transaction) -> int:
        if outbox is not None:
            txn.cursor(outbox).putmulti([(_out_key(stamp, k), b"-") for k in keys])
        return sum(1 for k in keys if txn.delete(k, db=db))

    return store.write_growing(drop, 2 * sum(len(k) + 8 for k in keys))


def _out_key(value: bytes, k: bytes) -> bytes:
    """Outbox key: the change's time in ms (the order of publication), then the entry key."""
    return _MS.pack(_ms(_TIME.unpack_from(value)[0])) + k


def _ms(t: float) -> int:
    return round(t * 1000)


def entries(store: Store, db: Any, tenant: str | None = None) -> Iterator[Entry]:
    """Every entry (of one tenant when given), in key order, a page per read transaction."""
    prefix = b"" if tenant is None else tenant.encode("utf-8", "surrogateescape") + b"\x00"
    start, skip = prefix, False
    while True:
        page: list[tuple[bytes, bytes]] = []
        with store.read() as txn:
            cur = txn.cursor(db)
            if cur.set_range(start):
                for k, v in cur:
                    kb = bytes(k)
                    if not kb.startswith(prefix):
                        break
                    if skip and kb == start:
                        continue
                    page.append((kb, bytes(v)))
                    if len(page) >= _PAGE:
                        break
        yield from (_entry(k, v) for k, v in page)
        if len(page) < _PAGE:
            return
        start, skip = page[-1][0], True


def _entry(k: bytes, v: bytes) -> Entry:
    t, _, addr = k.partition(b"\x00")
    return Entry(addr.decode("utf-8", "surrogateescape"), t.decode("utf-8", "surrogateescape"),
                 v[_TIME.size :].decode("utf-8", "replace"), _TIME.unpack_from(v)[0])  # fmt: skip


def lookup(store: Store, db: Any, address: str, tenant: str = "") -> Entry | None:
    """The entry that suppresses ``address`` for ``tenant`` (the global one first), or None."""
    with store.read() as txn:
        for t in ("", tenant) if tenant else ("",):
            k = key(address, t)
            v = txn.get(k, db=db)
            if v is not None:
                return _entry(k, bytes(v))
    return None


# --- the serving process's handle -------------------------------------------------------------


class SuppressionList:
    """Lookups on the delivery path and background writes for one serving process.

    ``shared``: the node is in a cluster, so every change also goes to the outbox
    (``on_change`` is called after each, to publish it without waiting for a poll)."""

    def __init__(self, store: Store, shared: bool = False) -> None:
        self.store = store
        self.db = open_db(store)
        self.outbox = open_outbox(store) if shared else None
        self.on_change: Callable[[], None] | None = None
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="suppression")

    @classmethod
    def open(cls, cfg: SpoolConfig, shared: bool = False) -> SuppressionList:
        """The node's list, for a serving process whose spool (or shard) is ``cfg``."""
        node = node_config(cfg)
        return cls(Store(node.path, node.map_size, node.max_map_size, sync=node.sync), shared)

    def suppressed(self, rcpts: Sequence[tuple[int, str]], tenant: str) -> list[int]:
        """Indexes of the given (index, address) pairs that are suppressed for ``tenant``."""
        db = self.db
        tb = tenant.encode("utf-8", "surrogateescape") + b"\x00" if tenant else b""
        out = []
        with self.store.read() as txn:
            get = txn.get
            for i, addr in rcpts:
                a = b"\x00" + normalize(addr).encode("utf-8", "surrogateescape")
                if get(a, db=db) is not None or (tb and get(tb + a[1:], db=db) is not None):
                    out.append(i)
        return out

    def add_soon(self, new: Sequence[Entry]) -> asyncio.Future[int]:
        """Write entries on the list's thread; the future resolves once they are committed."""
        return self._changed(self._run(add, self.store, self.db, list(new), self.outbox))

    def remove_soon(self, addresses: Sequence[str], tenant: str = "") -> asyncio.Future[int]:
        """Lift entries on the list's thread; the future resolves to how many were on it."""
        return self._changed(self._run(remove, self.store, self.db, list(addresses), tenant, self.outbox))

    def _run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    def _changed(self, fut: asyncio.Future[int]) -> asyncio.Future[int]:
        if self.outbox is not None:
            fut.add_done_callback(lambda _: self.on_change() if self.on_change is not None else None)
        return fut

    # --- what the cluster's sync task asks of the list (cluster/suppression.py: LocalList) ---

    def outgoing(self, limit: int) -> asyncio.Future[list[Outgoing]]:
        """The oldest ``limit`` changes waiting in the outbox."""
        return self._run(_outgoing, self.store, self.outbox, limit)

    def published(self, done: Sequence[Outgoing]) -> asyncio.Future[None]:
        """Those changes are in Redis: out of the outbox (unless rewritten meanwhile)."""
        return self._run(_published, self.store, self.outbox, list(done))

    def pending(self) -> int:
        """Changes in the outbox (a read transaction; no thread)."""
        if self.outbox is None:
            return 0
        with self.store.read() as txn:
            return int(txn.stat(self.outbox)["entries"])

    def apply(self, changes: Sequence[Change], cursor: bytes | None) -> asyncio.Future[int]:
        """Other nodes' changes (last writer wins), and the position read up to when given."""
        return self._run(apply, self.store, self.db, list(changes), cursor)

    def cursor(self) -> asyncio.Future[bytes]:
        """The position in Redis's change log saved by the last ``apply`` (b"" = never synced)."""
        return self._run(_cursor, self.store)

    def page(self, after: bytes, limit: int) -> asyncio.Future[list[Change]]:
        """Up to ``limit`` local entries after key ``after``, as changes (for a full reconcile)."""
        return self._run(_page, self.store, self.db, after, limit)

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self.store.close()


# --- sharing with other nodes ----------------------------------------------------------------


def _outgoing(store: Store, outbox: Any, limit: int) -> list[Outgoing]:
    out: list[Outgoing] = []
    with store.read() as txn:
        for k, v in txn.cursor(outbox):
            kb, vb = bytes(k), bytes(v)
            change = (
                kb[_MS.size :],
                _MS.unpack_from(kb)[0],
                vb[:1] == b"-",
                vb[1:].decode("utf-8", "replace"),
            )
            out.append((kb, vb, change))
            if len(out) >= limit:
                break
    return out


def _published(store: Store, outbox: Any, done: list[Outgoing]) -> None:
    def drop(txn: lmdb.Transaction) -> None:
        for k, v, _ in done:
            if txn.get(k, db=outbox) == v:
                txn.delete(k, db=outbox)

    store.write_growing(drop, 4096)


def apply(store: Store, db: Any, changes: Sequence[Change], cursor: bytes | None = None) -> int:
    """Apply changes made elsewhere: an add takes only over an older entry (or none), a
    removal only over an entry no newer than itself; the number that changed the list.
    Applying a change twice, or a node's own change coming back, changes nothing."""

    def work(txn: lmdb.Transaction) -> int:
        n = 0
        for k, ms, removed, reason in changes:
            cur = txn.get(k, db=db)
            cur_ms = None if cur is None else _ms(_TIME.unpack_from(cur)[0])
            if removed:
                if cur_ms is not None and cur_ms <= ms and txn.delete(k, db=db):
                    n += 1
            elif cur_ms is None or cur_ms < ms:
                txn.put(k, _TIME.pack(ms / 1000) + reason[:MAX_REASON].encode(), db=db)
                n += 1
        if cursor is not None:
            txn.put(CURSOR, cursor, db=store.meta)
        return n

    return store.write_growing(work, 2 * sum(len(c[0]) + len(c[3]) + 16 for c in changes) + 4096)


def _cursor(store: Store) -> bytes:
    with store.read() as txn:
        v = txn.get(CURSOR, db=store.meta)
        return b"" if v is None else bytes(v)


def _page(store: Store, db: Any, after: bytes, limit: int) -> list[Change]:
    out: list[Change] = []
    with store.read() as txn:
        cur = txn.cursor(db)
        if cur.set_range(after):
            for k, v in cur:
                kb = bytes(k)
                if kb == after:
                    continue
                vb = bytes(v)
                out.append(
                    (kb, _ms(_TIME.unpack_from(vb)[0]), False, vb[_TIME.size :].decode("utf-8", "replace"))
                )
                if len(out) >= limit:
                    break
    return out
