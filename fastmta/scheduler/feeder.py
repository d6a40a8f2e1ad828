# SPDX-License-Identifier: MIT
"""The feeder: pages due messages from the spool's schedule index into the scheduler.

New mail arrives through ``submit`` without any scan; everything else comes back
this way about once a second: retries, messages left by a crash or restart,
``fastmta queue flush`` / ``bounce`` done by another process, and messages that
``submit`` turned away because memory was full. Ids already in memory are
skipped; ids that vanished (``queue delete``) are ignored. It also keeps the
queue gauges current, once per pass instead of once per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from fastmta import metrics
from fastmta.scheduler.core import Scheduler

log = logging.getLogger("fastmta.scheduler")

PAGE = 1000  # schedule-index entries per read transaction


class Feeder:
    def __init__(
        self, sched: Scheduler, interval: float = 1.0, count: Callable[[], int] | None = None
    ) -> None:
        self.sched = sched
        self.interval = interval
        self.count = count  # messages in the spool (cheap); None: the "deferred" gauge is not kept
        self.budget = max(10 * PAGE, 5 * sched.max_in_memory)  # index entries looked at per pass
        self._cursor: tuple[float, str] | None = None
        self._wake = asyncio.Event()
        self._gauges = {
            s: metrics.bound(metrics.queue_messages, s) for s in ("ready", "inflight", "deferred")
        }
        self._shard_depth = [
            metrics.bound(metrics.scheduler_shard_depth, str(i)) for i in range(len(sched.shards))
        ]
        sched.on_room = self.wake

    def wake(self) -> None:
        """Scan now instead of at the next tick (hold lifted, memory freed)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await self.scan()
                self.update_gauges()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("feeder pass failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()

    async def scan(self) -> int:
        """Admit due messages not in memory, up to the memory bound; returns how many.

        The scan resumes where the previous one stopped and wraps around once, and
        looks at no more than ``budget`` index entries: messages left in the spool
        (memory full, destination at its share) cost one bounded pass each second,
        never a read of the whole queue.
        """
        sched = self.sched
        if sched.held:
            return 0
        spool: Any = sched.spool
        now = sched.clock()
        start = after = self._cursor
        wrapped = start is None
        examined = admitted = 0
        while len(sched.rounds) < sched.max_in_memory and examined < self.budget:
            page = spool.due(now, PAGE, after)
            for key in page:
                if wrapped and start is not None and key >= start:
                    page = []  # back where this pass began
                    break
                examined += 1
                after = key
                if key[1] in sched.rounds or sched.still_parked(key[1]):
                    continue
                env = spool.envelope(key[1])
                if env is None:
                    continue  # deleted meanwhile
                if sched.admit(env):
                    admitted += 1
                    if len(sched.rounds) >= sched.max_in_memory:
                        sched.overflow = True  # more may be due: scan again as soon as room frees up
                        break
            if len(page) < PAGE:
                if wrapped:
                    after = None
                    if examined < self.budget:
                        sched.overflow = False
                    break
                wrapped, after = True, None
            await asyncio.sleep(0)  # let deliveries run between pages
        self._cursor = after
        return admitted

    def update_gauges(self) -> None:
        sched = self.sched
        ready, inflight = sched.depth()
        self._gauges["ready"].set(ready)
        self._gauges["inflight"].set(inflight)
        if self.count is not None:
            self._gauges["deferred"].set(max(0, self.count() - len(sched.rounds)))
        for shard, gauge in zip(sched.shards, self._shard_depth, strict=False):
            gauge.set(shard.ready)
