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
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import lmdb

from fastmta.config import SpoolConfig
from fastmta.spool.store import Store

DIR = "suppression"
DB = b"suppress"
_TIME = struct.Struct("<d")
MAX_REASON = 500
_PAGE = 1000  # entries per read transaction when listing


@dataclass(frozen=True, slots=True)
class Entry:
    address: str
    tenant: str = ""  # "" = every tenant (global)
    reason: str = ""
    time: float = 0.0


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


# --- synchronous operations (commands, the writer thread) ---------------------------------


def add(store: Store, db: Any, entries: Sequence[Entry]) -> int:
    """Add or refresh entries; the number written."""
    now = time.time()
    items = [
        (key(e.address, e.tenant), _TIME.pack(e.time or now) + e.reason[:MAX_REASON].encode())
        for e in entries
    ]

    def put(txn: lmdb.Transaction) -> int:
        return int(txn.cursor(db).putmulti(items)[1])

    return store.write_growing(put, sum(len(k) + len(v) for k, v in items))


def remove(store: Store, db: Any, addresses: Iterable[str], tenant: str = "") -> int:
    keys = [key(a, tenant) for a in addresses]
    with store.write() as txn:
        return sum(1 for k in keys if txn.delete(k, db=db))


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
    """Lookups on the delivery path and background writes for one serving process."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = open_db(store)
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="suppression")

    @classmethod
    def open(cls, cfg: SpoolConfig) -> SuppressionList:
        """The node's list, for a serving process whose spool (or shard) is ``cfg``."""
        node = node_config(cfg)
        return cls(Store(node.path, node.map_size, node.max_map_size, sync=node.sync))

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
        return asyncio.get_running_loop().run_in_executor(self._writer, add, self.store, self.db, list(new))

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self.store.close()
