# SPDX-License-Identifier: MIT
"""Administration of a spool that a server may be using right now (``fastmta queue``).

LMDB is multi-process: these helpers open the environment themselves, read in
pages of short read transactions (a reader never pins old pages for long, and a
million-message queue streams instead of loading) and change messages through
their own short write transactions, a page at a time. The running server's
scheduler notices a flush or delete at its next ``due()`` scan (about a second);
a flush also lifts the suspension of its destinations (``signal_flush``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import lmdb

from fastmta.config import SpoolConfig
from fastmta.spool import flush, ops, records
from fastmta.spool.records import Envelope, RecordError
from fastmta.spool.store import Store

PAGE = 1000


def exists(cfg: SpoolConfig) -> bool:
    return os.path.exists(os.path.join(cfg.path, "data.mdb"))


def open_store(cfg: SpoolConfig) -> Store:
    return Store(cfg.path, cfg.map_size, cfg.max_map_size, sync=cfg.sync)


def iter_envelopes(store: Store, on_damaged: Callable[[str, str], None] | None = None,
                   page: int = PAGE) -> Iterator[Envelope]:  # fmt: skip
    """Every envelope in id (arrival) order, ``page`` records per read transaction."""
    after = b""
    while True:
        rows: list[tuple[bytes, bytes]] = []
        with store.read() as txn:
            cur = txn.cursor(store.envs)
            if not cur.set_range(after):
                return
            for key, value in cur:
                if key == after:
                    continue
                rows.append((cast(bytes, key), cast(bytes, value)))
                if len(rows) >= page:
                    break
        if not rows:
            return
        for key, value in rows:
            msg_id = key.decode("ascii", "replace")
            try:
                yield records.decode(msg_id, value)
            except RecordError as e:
                if on_damaged is not None:
                    on_damaged(msg_id, str(e))
        after = rows[-1][0]


def iso(ts: float | None) -> str | None:
    """ISO 8601 UTC, second precision: ``2026-11-28T20:30:00Z``."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def row(env: Envelope) -> dict[str, Any]:
    """The ``queue list --json`` object (its keys are a public contract: docs/operations.md)."""
    return {
        "id": env.id, "from": env.sender, "rcpts": [r.addr for r in env.rcpts if r.pending],
        "size": env.size, "attempts": env.attempts, "arrived": iso(env.arrived),
        "next_attempt": iso(env.next_attempt), "last_error": env.last_error,
    }  # fmt: skip


def show_doc(env: Envelope) -> dict[str, Any]:
    """``queue show --json`` and the HTTP API's message: the list row and every detail."""
    return {**row(env), "arrived_ts": env.arrived, "next_attempt_ts": env.next_attempt,
            "client_ip": env.client_ip, "helo": env.helo, "listener": env.listener, "params": env.params,
            "recipients": [{"addr": r.addr, "state": r.state, "orcpt": r.orcpt, "notify": r.notify,
                            "attempts": r.attempts, "last_error": r.last_error}
                           for r in env.rcpts]}  # fmt: skip


def headers(body: bytes | None) -> bytes:
    """The header block of a message (up to the empty line)."""
    if not body:
        return b""
    end = body.find(b"\r\n\r\n")
    return body if end < 0 else body[: end + 2]


def first_chunk(store: Store, msg_id: str) -> bytes | None:
    """The start of a body (enough for its headers) without reading a 50 MiB message whole."""
    with store.read() as txn:
        return cast("bytes | None", txn.get(msg_id.encode("ascii") + b"\x00\x00", db=store.bodies))


def apply(store: Store, ids: Iterable[str], fn: Callable[[Store, lmdb.Transaction, bytes], bool],
          page: int = 200) -> tuple[int, list[str]]:  # fmt: skip
    """Run ``fn`` on each id, ``page`` ids per write transaction; (changed, ids not found)."""
    changed = 0
    missing: list[str] = []
    batch: list[str] = []

    def flush() -> None:
        nonlocal changed
        results = store.write_growing(lambda txn: [fn(store, txn, i.encode("ascii")) for i in batch], 1024**2)
        changed += sum(results)
        missing.extend(i for i, ok in zip(batch, results, strict=True) if not ok)
        batch.clear()

    for msg_id in ids:
        batch.append(msg_id)
        if len(batch) >= page:
            flush()
    if batch:
        flush()
    return changed, missing


def flush_fn(now: float, domains: set[str] | None = None) -> Callable[[Store, lmdb.Transaction, bytes], bool]:
    """Make a message due at ``now``; collect its pending recipients' domains into ``domains``."""

    def fn(store: Store, txn: lmdb.Transaction, id_b: bytes) -> bool:
        if domains is not None:
            env = ops.load(store, txn, id_b)
            if env is not None:
                domains.update(r.addr.rpartition("@")[2].lower() for r in env.rcpts if r.pending)
        return ops.reschedule(store, txn, id_b, now)

    return fn


def signal_flush(store: Store, domains: Iterable[str] | None) -> None:
    """Tell a running scheduler to lift the suspension of these destinations (None: all); flush.py."""
    scope = None if domains is None else list(domains)
    store.write_growing(lambda txn: flush.bump(txn, store.meta, scope), 1024**2)


def bounce_fn(now: float) -> Callable[[Store, lmdb.Transaction, bytes], bool]:
    return lambda store, txn, id_b: ops.bounce(store, txn, id_b, now)


def ids_for_domain(store: Store, domain: str) -> Iterator[str]:
    """Ids of messages with a pending recipient at ``domain``."""
    domain = domain.lower().rstrip(".")
    for env in iter_envelopes(store):
        if any(r.pending and r.addr.rpartition("@")[2].lower().rstrip(">") == domain for r in env.rcpts):
            yield env.id


@dataclass
class Stats:
    messages: int = 0
    bytes: int = 0
    recipients: dict[str, int] = field(default_factory=lambda: dict.fromkeys(records.STATES, 0))
    new: int = 0  # never tried yet
    deferred: int = 0  # tried at least once
    due_now: int = 0
    oldest_arrived: float | None = None
    damaged: int = 0
    quarantined: int = 0
    map_used_bytes: int = 0  # live data: pages the databases hold
    map_free_bytes: int = 0  # free pages inside data.mdb, reused before the file grows
    map_high_water_bytes: int = 0  # LMDB's last page: data.mdb never shrinks below it
    map_size_bytes: int = 0
    max_map_size_bytes: int = 0


def stats(store: Store, now: float | None = None) -> Stats:
    """Counts by state, bytes, oldest message and map use (streams the whole queue)."""
    now = time.time() if now is None else now
    st = Stats()

    def damaged(_id: str, _why: str) -> None:
        st.damaged += 1

    for env in iter_envelopes(store, damaged):
        st.messages += 1
        st.bytes += env.size
        for r in env.rcpts:
            st.recipients[r.state] += 1
        if env.attempts:
            st.deferred += 1
        else:
            st.new += 1
        if env.next_attempt <= now:
            st.due_now += 1
        if st.oldest_arrived is None or env.arrived < st.oldest_arrived:
            st.oldest_arrived = env.arrived
    with store.read() as txn:
        st.quarantined = int(txn.stat(store.quar)["entries"])
    sp = store.space()
    st.map_used_bytes, st.map_free_bytes, st.map_high_water_bytes = sp.live, sp.free, sp.high_water
    st.map_size_bytes = sp.map_size
    st.max_map_size_bytes = store.max_map_size
    return st
