# SPDX-License-Identifier: MIT
"""Spool shards: one LMDB environment per worker process (``[server] workers = N``).

Layout: with ``[server] workers = 1`` the spool is ``<path>`` itself, exactly as
a single process has always used it. With N > 1 workers, worker *n* owns
``<path>/<n>/`` and nobody else writes through a writer process there, so the
workers never contend for LMDB's single write lock. Message ids carry ~41 random
bits per microsecond (ids.py), so they stay unique across shards without any
coordination.

Readers that must see the whole node (``fastmta queue``, the metrics exporter)
enumerate every shard present on disk, whatever ``workers`` says now. When the
worker count changes, :func:`adopt_orphans` moves the messages of shards that no
worker will serve into the live ones before any worker starts, so no queued mail
is stranded by a smaller (or larger) ``workers``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import itertools
import logging
import os
from collections.abc import Callable, Iterator

import lmdb

from fastmta.config import Config, SpoolConfig
from fastmta.spool import admin, records, space
from fastmta.spool.ids import ID_LEN
from fastmta.spool.records import Envelope
from fastmta.spool.store import DB_NAMES, Store, ensure_dir, sched_key

log = logging.getLogger("fastmta.spool.shards")

_MOVE_PAGE = 500  # messages per write transaction when adopting an orphan shard


def shard_config(cfg: SpoolConfig, index: int, workers: int) -> SpoolConfig:
    """The spool of worker ``index`` of ``workers``: ``<path>`` alone, else ``<path>/<index>``."""
    if workers <= 1:
        return cfg
    return dataclasses.replace(
        cfg, path=os.path.join(cfg.path, str(index)), node_path=cfg.node_path or cfg.path
    )


def injection_config(cfg: Config) -> SpoolConfig:
    """Where a local injector (``fastmta sendmail``) writes: one shard, picked by pid.

    Spreading injectors by pid keeps one shard from taking all local mail; the
    worker that owns the shard finds the message at its next ``due()`` scan.
    """
    return shard_config(cfg.spool, os.getpid() % cfg.server.workers, cfg.server.workers)


def present(cfg: SpoolConfig) -> list[tuple[int | None, SpoolConfig]]:
    """Every spool environment on disk: ``(None, <path>)`` if it holds one, then each ``(n, <path>/<n>)``."""
    found: list[tuple[int | None, SpoolConfig]] = []
    if admin.exists(cfg):
        found.append((None, cfg))
    try:
        names = os.listdir(cfg.path)
    except OSError:
        return found
    for n in sorted(int(name) for name in names if name.isdigit() and name == str(int(name))):
        sub = shard_config(cfg, n, 2)
        if admin.exists(sub):
            found.append((n, sub))
    return found


def open_all(cfg: SpoolConfig) -> list[Store]:
    """A Store per shard on disk (close each when done)."""
    stores: list[Store] = []
    try:
        for _, sub in present(cfg):
            stores.append(admin.open_store(sub))
    except BaseException:
        for store in stores:
            store.close()
        raise
    return stores


def iter_envelopes(
    stores: list[Store], on_damaged: Callable[[str, str], None] | None = None
) -> Iterator[Envelope]:
    """Every envelope of every shard in id order: ids sort by arrival, so this is arrival order."""
    streams = [admin.iter_envelopes(store, on_damaged) for store in stores]
    if len(streams) == 1:
        return streams[0]
    return heapq.merge(*streams, key=lambda env: env.id)


def locate(stores: list[Store], msg_id: str) -> Store | None:
    """The shard holding ``msg_id``, or None."""
    id_b = msg_id.encode("ascii")
    for store in stores:
        if store.envelope_raw(id_b) is not None:
            return store
    return None


def merged_stats(stores: list[Store]) -> admin.Stats:
    """``admin.stats`` summed over shards (the oldest message is the oldest of all)."""
    return merge([admin.stats(store) for store in stores])


def merge(per_shard: list[admin.Stats]) -> admin.Stats:
    """Several shards' ``admin.Stats`` as one."""
    total = admin.Stats()
    for st in per_shard:
        for f in ("messages", "bytes", "new", "deferred", "due_now", "damaged", "quarantined",
                  "map_used_bytes", "map_free_bytes", "map_high_water_bytes", "map_size_bytes",
                  "max_map_size_bytes"):  # fmt: skip
            setattr(total, f, getattr(total, f) + getattr(st, f))
        for state, count in st.recipients.items():
            total.recipients[state] = total.recipients.get(state, 0) + count
        oldest = [t for t in (total.oldest_arrived, st.oldest_arrived) if t is not None]
        total.oldest_arrived = min(oldest) if oldest else None
    return total


def usage(cfg: SpoolConfig) -> dict[str, float]:
    """Live data, free pages, high water and map size summed over every shard (space.py).

    For the supervisor's exporter, which holds no environment open: each scrape
    opens the shards read-only for a moment, so a map grown by a worker is seen
    as it is now, never through a stale handle.
    """
    spaces = []
    for _, sub in present(cfg):
        env = lmdb.open(sub.path, readonly=True, lock=False, max_dbs=8, subdir=True, map_size=0)
        try:
            with env.begin() as txn:
                dbs = []
                for name in DB_NAMES:
                    with contextlib.suppress(lmdb.NotFoundError):  # a shard not opened by a Store yet
                        dbs.append(env.open_db(name, txn=txn, create=False))
                spaces.append(space.measure(env, txn, dbs, sub.max_map_size))
        finally:
            env.close()
    return space.space_stats(*spaces)


def adopt_orphans(cfg: SpoolConfig, workers: int) -> int:
    """Move queued mail out of shards no worker will serve; the number of messages moved.

    Run before any worker starts (nothing else commits to those shards then).
    With one worker every ``<path>/<n>`` feeds ``<path>``; with N workers
    ``<path>`` feeds shard 0 and shard n ≥ N feeds shard n mod N. A crash midway
    leaves a message in both places at worst (moved, not yet deleted): the next
    start moves it again, over the same key.
    """
    ensure_dir(cfg.path)
    moved = 0
    for index, sub in present(cfg):
        if workers <= 1:
            if index is None:
                continue
            target = cfg
        elif index is not None and index < workers:
            continue
        else:
            target = shard_config(cfg, 0 if index is None else index % workers, workers)
        src = admin.open_store(sub)
        try:
            if _message_count(src) == 0:
                continue
            dst = admin.open_store(target)
            try:
                n = _move_all(src, dst)
            finally:
                dst.close()
        finally:
            src.close()
        log.warning("spool: moved %d queued message(s) from %s to %s (workers = %d)",
                    n, sub.path, target.path, workers)  # fmt: skip
        moved += n
    return moved


def _message_count(store: Store) -> int:
    with store.read() as txn:
        return int(txn.stat(store.envs)["entries"]) + int(txn.stat(store.quar)["entries"])


def _move_all(src: Store, dst: Store) -> int:
    """Copy every record (envelope, body pieces, schedule entries, quarantine) then delete it from ``src``."""
    moved = 0
    for db_name in ("envs", "quar"):
        while True:
            with src.read() as txn:
                keys = txn.cursor(getattr(src, db_name)).iternext(values=False)
                ids = [bytes(k) for k in itertools.islice(keys, _MOVE_PAGE)]
            if not ids:
                break
            _copy(src, dst, db_name, ids)
            with src.write() as txn:
                for id_b in ids:
                    _delete(src, txn, db_name, id_b)
            moved += len(ids)
    return moved


def _sched_key(db_name: str, id_b: bytes, raw: bytes) -> bytes | None:
    """The schedule entry of an envelope (derived from its stored next attempt, as ops.py keeps it)."""
    if db_name != "envs" or not records.check(raw):
        return None  # quarantined or damaged: not scheduled (recovery repairs the index anyway)
    return sched_key(records.next_attempt_of(raw), id_b)


def _records(src: Store, txn: lmdb.Transaction, db_name: str, id_b: bytes) -> list[tuple[str, bytes, bytes]]:
    """(database, key, value) of everything stored for one message."""
    raw = bytes(txn.get(id_b, db=getattr(src, db_name)) or b"")
    out = [(db_name, id_b, raw)]
    cur = txn.cursor(src.bodies)
    if cur.set_range(id_b):
        for key, value in cur:
            if key[:ID_LEN] != id_b:
                break
            out.append(("bodies", bytes(key), bytes(value)))
    sched = _sched_key(db_name, id_b, raw)
    if sched is not None:
        out.append(("sched", sched, b""))
    return out


def _copy(src: Store, dst: Store, db_name: str, ids: list[bytes]) -> None:
    with src.read() as txn:
        rows = [r for id_b in ids for r in _records(src, txn, db_name, id_b)]

    def put_rows(txn: lmdb.Transaction) -> None:
        for name, key, value in rows:
            txn.put(key, value, db=getattr(dst, name))

    dst.write_growing(put_rows, sum(len(v) + len(k) for _, k, v in rows))


def _delete(store: Store, txn: lmdb.Transaction, db_name: str, id_b: bytes) -> None:
    raw = txn.get(id_b, db=getattr(store, db_name))
    if raw is None:
        return
    sched = _sched_key(db_name, id_b, bytes(raw))
    txn.delete(id_b, db=getattr(store, db_name))
    if sched is not None:
        txn.delete(sched, db=store.sched)
    cur = txn.cursor(store.bodies)
    if cur.set_range(id_b):
        while cur.key()[:ID_LEN] == id_b:
            if not cur.delete():
                break
