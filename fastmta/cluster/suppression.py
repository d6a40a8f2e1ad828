# SPDX-License-Identifier: MIT
"""One suppression list for every node of a cluster, carried by Redis, checked locally.

Each node keeps the whole list in its own LMDB (spool/suppression.py) and the
delivery path checks only that copy: Redis is never asked per recipient, and a
Redis that is away or stalled leaves every check, the API and the command as they
are. Redis holds the list as a hash (removals kept as tombstones, so a node that
was away cannot bring a lifted entry back) and a stream of the changes that took;
the ``SUPPRESS`` script (cluster/lua.py) decides, last writer by the change's time
winning, a removal winning a tie.

One task per node (worker 0) does the syncing:

* **push**: changes made on this node (API, command, bounces, complaints; any
  worker) wait in the list's outbox until the script took them, so none is lost
  while Redis is away; the task is woken by its own process's changes and looks
  at the outbox every ``interval`` for the others';
* **follow**: ``XREAD BLOCK`` from the saved cursor, applying other nodes' changes
  (its own come back too: applying them again changes nothing); the cursor is saved
  in the same LMDB transaction as the changes;
* **reconcile** (first start, or a cursor no longer in the stream: trimmed, or a
  Redis that lost its data): note the stream's last id, pull the whole hash into
  the list, push the local entries the hash lacks (a node joining with a list of its
  own, or rebuilding a Redis that came back empty), then follow from the noted id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from fastmta import metrics
from fastmta.cluster import lua
from fastmta.config import ClusterConfig

log = logging.getLogger("fastmta.cluster")

LOG_MAX = 1_000_000  # changes the stream keeps (about); a node further behind reconciles
READ = 1000  # changes read, or written, per Redis call
NO_CURSOR = b"0-0"

# (entry key, time in ms, removed, reason) and (outbox key, outbox value, change):
# what spool/suppression.py calls Change and Outgoing.
Change = tuple[bytes, int, bool, str]
Outgoing = tuple[bytes, bytes, Change]


class LocalList(Protocol):
    """What the sync needs of the node's list (``spool.suppression.SuppressionList``)."""

    on_change: Callable[[], None] | None

    def outgoing(self, limit: int) -> Awaitable[list[Outgoing]]: ...
    def published(self, done: Sequence[Outgoing]) -> Awaitable[None]: ...
    def pending(self) -> int: ...
    def apply(self, changes: Sequence[Change], cursor: bytes | None) -> Awaitable[int]: ...
    def cursor(self) -> Awaitable[bytes]: ...
    def page(self, after: bytes, limit: int) -> Awaitable[list[Change]]: ...


class SuppressionSync:
    """Keeps one node's list and the cluster's in step; ``start`` after the loop runs."""

    def __init__(self, cfg: ClusterConfig, local: LocalList, log_max: int = LOG_MAX) -> None:
        self.cfg = cfg
        self.local = local
        self.log_max = log_max
        # no socket timeout: XREAD blocks on purpose; every call runs under its own bound
        self.redis = aioredis.from_url(
            cfg.redis, socket_connect_timeout=cfg.timeout, retry=Retry(NoBackoff(), 0)
        )
        self._hash, self._log = cfg.prefix + "suppress", cfg.prefix + "suppress:log"
        self._script = self.redis.register_script(lua.SUPPRESS)
        self._wake = asyncio.Event()
        self._pushing = asyncio.Lock()
        self.synced = False
        self._said_down = False  # the out-of-sync warning is out; the next sync says so
        self._tasks: list[asyncio.Task[None]] = []
        node = cfg.node_id
        self._m_in_sync = metrics.cluster_suppression_in_sync.labels(node)
        self._m_outbox = metrics.cluster_suppression_outbox.labels(node)
        self._m_published = metrics.cluster_suppression_changes_total.labels(node, "published")
        self._m_applied = metrics.cluster_suppression_changes_total.labels(node, "applied")
        self._m_errors = metrics.cluster_redis_errors_total.labels(node)
        self._m_in_sync.set(0)

    def start(self) -> None:
        """Start following and publishing; never waits for Redis (the list works without it)."""
        self.local.on_change = self._wake.set
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._follow_loop()), loop.create_task(self._push_loop())]

    async def close(self) -> None:
        self.local.on_change = None
        pending = set(self._tasks)
        while pending:  # again until they end: a cancel that meets a timeout can get lost
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.1)
        with contextlib.suppress(Exception):
            await self.redis.aclose()

    # --- following the cluster ------------------------------------------------------------------

    async def _follow_loop(self) -> None:
        while True:
            try:
                cursor = await self._resync()
                self._set_synced(True)
                while True:
                    cursor = await self._read(cursor)
            except _Down as e:
                self._set_synced(False, str(e))
            except Exception as e:  # a bad answer or a local error must not end the sync
                log.exception("cluster: suppression list sync failed")
                self._set_synced(False, f"{type(e).__name__}: {e}")
            await asyncio.sleep(self.cfg.interval)

    async def _resync(self) -> bytes:
        """Publish what waits, then the cursor to follow from (reconciling when the saved one
        is gone from the stream)."""
        await self._push()
        cursor = await self.local.cursor()
        if cursor and cursor != NO_CURSOR and await self._in_log(cursor):
            return cursor
        return await self._reconcile()

    async def _read(self, cursor: bytes) -> bytes:
        """One blocking read of the stream after ``cursor``; the cursor after what was applied."""
        block = self.cfg.interval
        found = await self._call(
            self.redis.xread({self._log: cursor}, count=READ, block=int(block * 1000)), extra=block
        )
        entries = found[0][1] if found else []
        if not entries:
            return cursor
        if len(entries) == READ and cursor != NO_CURSOR and not await self._in_log(cursor):
            raise _Down("fell behind the stream's length: reconciling")
        changes = [c for _, fields in entries if (c := decode(fields.get(b"k"), fields.get(b"v")))]
        last = bytes(entries[-1][0])
        self._m_applied.inc(await self.local.apply(changes, last))
        return last

    async def _in_log(self, cursor: bytes) -> bool:
        return bool(await self._call(self.redis.xrange(self._log, cursor, cursor, count=1)))

    async def _reconcile(self) -> bytes:
        t0 = time.monotonic()
        newest = await self._call(self.redis.xrevrange(self._log, count=1))
        cursor = bytes(newest[0][0]) if newest else NO_CURSOR
        pulled = pushed = 0
        scan: int = 0
        while True:
            scan, page = await self._call(self.redis.hscan(self._hash, scan, count=READ))
            changes = [c for k, v in page.items() if (c := decode(k, v))]
            pulled += await self.local.apply(changes, None)
            if scan == 0:
                break
        after = b""
        while mine := await self.local.page(after, READ):
            known = await self._call(self.redis.hmget(self._hash, [c[0] for c in mine]))
            missing = [c for c, v in zip(mine, known, strict=True) if v is None]
            if missing:
                pushed += await self._send(missing)
            after = mine[-1][0]
        await self.local.apply([], cursor)
        self._m_applied.inc(pulled)
        log.info(
            "cluster: suppression list reconciled with Redis in %.1fs"
            " (%d change(s) taken, %d entry(ies) published)",
            time.monotonic() - t0,
            pulled,
            pushed,
        )
        return cursor

    # --- publishing this node's changes -----------------------------------------------------------

    async def _push_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.cfg.interval):  # (wait_for of 3.11 can swallow a cancel)
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._push()
            except _Down:
                pass  # kept in the outbox; the follower reports the state
            except Exception:
                log.exception("cluster: publishing suppression changes failed")
            waiting = self.local.pending()
            self._m_outbox.set(waiting)
            self._m_in_sync.set(1 if self.synced and waiting == 0 else 0)

    async def _push(self) -> None:
        """Everything in the outbox into Redis, oldest first; each batch leaves the outbox only
        once the script took it."""
        async with self._pushing:
            while batch := await self.local.outgoing(READ):
                await self._send([c for _, _, c in batch])
                await self.local.published(batch)
                self._m_published.inc(len(batch))

    async def _send(self, changes: Sequence[Change]) -> int:
        """Changes into Redis; those a later change beat are undone here too (a node whose
        change lost, made while Redis was away or on a clock behind, takes the winner)."""
        args: list[Any] = [self.log_max]
        for change in changes:
            args += [change[0], encode(change)]
        took, beaten = await self._call(self._script(keys=[self._hash, self._log], args=args))
        if beaten:
            winners = [c for i in range(0, len(beaten), 2) if (c := decode(beaten[i], beaten[i + 1]))]
            self._m_applied.inc(await self.local.apply(winners, None))
        return int(took)

    # --- Redis calls and state ----------------------------------------------------------------------

    async def _call(self, aw: Awaitable[Any], extra: float = 0.0) -> Any:
        """One Redis call under ``timeout`` (plus ``extra``: a blocking read's own wait)."""
        try:
            async with asyncio.timeout(self.cfg.timeout + extra):
                return await aw
        except (TimeoutError, aioredis.RedisError, OSError) as e:
            self._m_errors.inc()
            raise _Down(
                "no answer in time" if isinstance(e, TimeoutError) else f"{type(e).__name__}: {e}"
            ) from None

    def _set_synced(self, synced: bool, why: str = "") -> None:
        self.synced = synced
        self._m_in_sync.set(1 if synced and self.local.pending() == 0 else 0)
        if synced and self._said_down:
            log.warning("cluster: suppression list in sync with Redis again")
        elif not synced and not self._said_down:
            log.warning(
                "cluster: suppression list out of sync (%s): checks use this node's copy, "
                "its changes wait in the outbox until Redis is back",
                why,
            )
        self._said_down = not synced


class _Down(Exception):
    """Redis did not answer (or the stream moved past us): resync after ``interval``."""


def encode(change: Change) -> bytes:
    """The value Redis keeps for a change: ``"<ms> +<reason>"`` or ``"<ms> -"``."""
    _, ms, removed, reason = change
    return f"{ms} -".encode() if removed else f"{ms} +{reason}".encode("utf-8", "replace")


def decode(k: Any, v: Any) -> Change | None:
    """A change from a hash field and value, or None for anything malformed."""
    if not isinstance(k, bytes) or b"\x00" not in k or not isinstance(v, bytes):
        return None
    ms, _, rest = v.partition(b" ")
    if not ms.isdigit() or rest[:1] not in (b"+", b"-"):
        return None
    return k, int(ms), rest[:1] == b"-", rest[1:].decode("utf-8", "replace")
