# SPDX-License-Identifier: MIT
"""Queue administration for the HTTP API, over every spool shard of the node.

Blocking LMDB work: the API runs these in a thread. With ``[server] workers = N``
a request reaches one worker, so reads merge every shard and writes go to every
shard (suspensions) or to the one holding the message; each worker's scheduler
picks the change up at its next feeder pass (about a second; the worker that
answered applies it at once). This process's own shard is used through its open
``Store``: LMDB must not be opened twice in one process.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

from fastmta.config import SpoolConfig
from fastmta.spool import admin, ops, records, shards, suspend
from fastmta.spool.records import PENDING
from fastmta.spool.store import Store


@contextlib.contextmanager
def node_stores(node: SpoolConfig, own: Store) -> Iterator[list[Store]]:
    """A Store per shard of the node (``own`` for this process's shard); closed afterwards."""
    mine = os.path.realpath(own.path)
    opened: list[Store] = []
    stores: list[Store] = []
    try:
        for _, sub in shards.present(node):
            if os.path.realpath(sub.path) == mine:
                stores.append(own)
            else:
                store = admin.open_store(sub)
                opened.append(store)
                stores.append(store)
        if own not in stores:
            stores.append(own)
        yield stores
    finally:
        for store in opened:
            store.close()


def _domain(addr: str) -> str:
    return addr.rpartition("@")[2].lower()


def queue(node: SpoolConfig, own: Store, now: float | None = None) -> dict[str, Any]:
    """Pending recipients per destination domain and state, with the suspensions in force.

    States: ``ready`` (due now), ``deferred`` (waiting for a retry time), ``bounce``
    (an administrator's bounce the scheduler has yet to act on)."""
    now = time.time() if now is None else now
    dests: dict[str, dict[str, int]] = {}
    messages = 0
    with node_stores(node, own) as stores:
        for env in shards.iter_envelopes(stores):
            messages += 1
            state = "ready" if env.next_attempt <= now else "deferred"
            for r in env.rcpts:
                if r.pending:
                    counts = dests.setdefault(_domain(r.addr), {"ready": 0, "deferred": 0, "bounce": 0})
                    counts[state if r.state == PENDING else "bounce"] += 1
        suspended = suspensions(own)
    return {
        "messages": messages,
        "recipients": sum(sum(c.values()) for c in dests.values()),
        "destinations": [
            {"domain": d, **c, "suspended_until": admin.iso(suspended[d][0]) if d in suspended else None}
            for d, c in sorted(dests.items())
        ],
    }


def message(node: SpoolConfig, own: Store, msg_id: str) -> dict[str, Any] | None:
    """One queued message as ``fastmta queue show --json`` shows it, or None."""
    with node_stores(node, own) as stores:
        store = shards.locate(stores, msg_id)
        if store is None:
            return None
        raw = store.envelope_raw(msg_id.encode("ascii"))
        if raw is None:
            return None
        doc = admin.show_doc(records.decode(msg_id, raw))
        doc["headers"] = admin.headers(admin.first_chunk(store, msg_id)).decode("utf-8", "replace")
        return doc


def suspensions(own: Store) -> suspend.Suspensions:
    with own.read() as txn:
        return suspend.load(txn.get(suspend.KEY, db=own.meta))


def set_suspension(node: SpoolConfig, own: Store, domain: str, until: float, reason: str) -> None:
    """Record the suspension in every shard (each worker's feeder reads its own)."""
    with node_stores(node, own) as stores:
        for store in stores:
            meta = store.meta

            def put(txn: Any, meta: Any = meta) -> None:
                suspend.add(txn, meta, domain, until, reason)

            store.write_growing(put, 1024**2)


def lift_suspension(node: SpoolConfig, own: Store, domain: str) -> bool:
    """Remove the suspension from every shard and make the domain's mail due now (what was
    put back while suspended waits for the suspension's end otherwise); False if none."""
    found = False
    with node_stores(node, own) as stores:
        for store in stores:
            meta = store.meta

            def drop(txn: Any, meta: Any = meta) -> bool:
                return suspend.remove(txn, meta, domain)

            found |= store.write_growing(drop, 1024**2)
            admin.apply(store, list(admin.ids_for_domain(store, domain)), admin.flush_fn(time.time()))
    return found


def bounce(
    node: SpoolConfig, own: Store, *, msg_id: str = "", domain: str = "", tenant: str = "", reason: str = ""
) -> int:
    """Fail pending recipients now (of one message, of a tenant's messages, or those at one
    domain) with a DSN; how many messages."""
    error = ops.ADMIN_BOUNCE_ERROR if not reason else f"550 5.0.0 {reason}"
    now = time.time()

    def fn(store: Store, txn: Any, id_b: bytes) -> bool:
        return ops.bounce(store, txn, id_b, now, error=error, domain=domain)

    changed = 0
    with node_stores(node, own) as stores:
        for store in stores:
            if msg_id:
                ids = [msg_id]
            elif tenant:
                ids = [e.id for e in admin.iter_envelopes(store) if e.tenant == tenant]
            else:
                ids = list(admin.ids_for_domain(store, domain))
            changed += admin.apply(store, ids, fn)[0]
    return changed
