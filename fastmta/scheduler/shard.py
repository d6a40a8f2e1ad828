# SPDX-License-Identifier: MIT
"""A shard: the destinations that hash to it, their ready queues and worker tasks.

Each destination has at most ``connections`` worker tasks; a worker takes the next
ready item, waits for its rate slot, calls the deliverer and hands the attempt
back to the scheduler, and exits when the queue is empty. So there is one task
per busy connection slot, not one per message, and a destination that is slow,
suspended or dead only ever occupies its own workers.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from fastmta.delivery import LOCAL_KEY, Destination
from fastmta.scheduler.destination import DestQueue

if TYPE_CHECKING:
    from fastmta.scheduler.core import Scheduler
    from fastmta.scheduler.ports import SharedLimits
    from fastmta.scheduler.rounds import Work


log = logging.getLogger("fastmta.scheduler")
LEASE_GRACE = 0.25  # seconds an idle worker keeps its cluster lease while another node asks for one


def shard_of(key: str, shards: int) -> int:
    """Stable across processes and restarts (unlike ``hash()``)."""
    return zlib.crc32(key.encode("utf-8", "surrogateescape")) % shards


class Shard:
    __slots__ = ("index", "sched", "dests", "ready", "inflight", "tasks")

    def __init__(self, index: int, sched: Scheduler) -> None:
        self.index = index
        self.sched = sched
        self.dests: dict[str, DestQueue] = {}
        self.ready = 0  # items waiting in this shard's ready queues
        self.inflight = 0  # deliver() calls running
        self.tasks: set[asyncio.Task[None]] = set()

    def queue(self, dest: Destination) -> DestQueue:
        dq = self.dests.get(dest.key)
        if dq is None:
            d = self.sched.cfg.delivery
            dq = self.dests[dest.key] = DestQueue(
                dest, d.max_connections_per_destination, d.message_rate_per_destination
            )
            if self.sched.shared_state or self.sched.shared_limits:
                self.sched.adopt(dq)
        return dq

    def add(self, dq: DestQueue, work: Work) -> None:
        """Queue work for a destination; start a worker if a connection slot is free."""
        now = self.sched.clock()
        if dq.suspended(now):
            self.sched.skip(dq, work, now)
            return
        dq.ready.append(work)
        self.ready += 1
        if dq.idle:
            dq.wake()
        self.kick(dq, now)

    def kick(self, dq: DestQueue, now: float) -> None:
        while dq.ready and dq.workers < min(dq.connections(now), len(dq.ready) + dq.inflight):
            dq.workers += 1
            task = asyncio.get_running_loop().create_task(self._worker(dq))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def drain(self, dq: DestQueue, each: Callable[[Work], None]) -> None:
        """Take every ready item out of a destination (it was suspended)."""
        items = list(dq.ready)
        dq.ready.clear()
        self.ready -= len(items)
        for w in items:
            each(w)

    async def _worker(self, dq: DestQueue) -> None:
        sched = self.sched
        shared = sched.shared if dq.dest.key != LOCAL_KEY else None  # local delivery is this node's own
        leased = False
        # with a cluster lease, a worker gives it back after a connection's worth of messages
        # when another node was refused one (as the connection would end), else it goes on
        per_lease = sched.cfg.delivery.max_messages_per_connection if shared is not None else -1
        budget = per_lease
        try:
            if shared is not None:
                leased = await self._lease(dq, shared)
            while dq.ready or (leased and await self._more_work(dq)):
                if not budget:
                    assert shared is not None
                    if shared.wanted(dq.dest.key):
                        break
                    budget = per_lease
                budget -= 1
                now = sched.clock()
                if dq.suspended(now) or sched.held or dq.inflight >= dq.connections(now):
                    return
                if shared is None:
                    wait = dq.reserve(now)
                    if wait > 0:
                        await asyncio.sleep(wait)
                        if not dq.ready or dq.suspended(sched.clock()):
                            return
                elif not await self._token(dq, shared):
                    continue  # the work went to another worker meanwhile: wait for more, leased
                work = dq.ready.popleft()
                self.ready -= 1
                if dq.parked and len(dq.ready) < sched.dest_cap // 2:
                    sched.room_for(dq)
                dq.inflight += 1
                self.inflight += 1
                try:
                    attempt = await sched.deliver(dq.dest, work)
                finally:
                    dq.inflight -= 1
                    self.inflight -= 1
                try:
                    sched.complete(self, dq, work, attempt)
                except Exception:  # a bug here must not take the destination's worker down with it
                    log.exception("applying a delivery result for %s failed", dq.dest.key)
        finally:
            if leased:
                assert shared is not None
                await self._hang_up(dq, shared)
            dq.workers -= 1
            if not budget and dq.ready:
                self.kick(dq, sched.clock())  # its successor asks for a lease like any other node
            now = sched.clock()
            idle = not (dq.ready or dq.workers or dq.inflight)
            if (
                idle
                and max(dq.suspended_until, dq.limit_until, dq.next_slot) <= now
                and self.dests.get(dq.dest.key) is dq
            ):
                # no state worth keeping: forget it, so the dict does not grow with every domain ever seen
                del self.dests[dq.dest.key]

    async def _hang_up(self, dq: DestQueue, shared: SharedLimits) -> None:
        """The worker's lease goes back once the pool holds no more connections than the other
        workers' leases cover: a receiver counts open connections, idle ones too."""
        key = dq.dest.key
        try:
            # counted afresh after every wait: other workers come and go meanwhile, and the
            # last check and the release happen in one step of the loop
            while await self.sched.remote.hang_up(key, max(0, shared.leases(key) - 1 - dq.inflight)):
                pass
        finally:
            shared.close_slot(dq.dest.key)

    async def _more_work(self, dq: DestQueue) -> bool:
        """A worker holding a cluster lease keeps it, and its connection in the pool, while work
        may come: a lease given back between bursts would cost a Redis round trip and a new
        connection each. It waits as long as the pool keeps an idle connection
        (``idle_timeout``), or only ``LEASE_GRACE`` while another node asks for the
        destination (a queue runs dry for a moment between the scheduler's rounds, and a
        lease given back at once would be asked for again at once); not once delivery stops."""
        sched = self.sched
        shared = sched.shared
        assert shared is not None
        key = dq.dest.key
        loop = asyncio.get_running_loop()
        start = loop.time()
        end = start + sched.cfg.delivery.idle_timeout
        while not dq.ready:
            if shared.wanted(key):
                end = min(end, start + LEASE_GRACE)
            left = end - loop.time()
            if left <= 0 or sched.held or dq.suspended(sched.clock()):
                return False
            fut: asyncio.Future[None] = loop.create_future()
            dq.idle.append(fut)
            try:
                await asyncio.wait_for(fut, min(left, sched.cfg.cluster.interval))
            except TimeoutError:
                if fut in dq.idle:
                    dq.idle.remove(fut)
        return not self._stopped(dq)

    def _stopped(self, dq: DestQueue) -> bool:
        return not dq.ready or self.sched.held or dq.suspended(self.sched.clock())

    async def _lease(self, dq: DestQueue, shared: SharedLimits) -> bool:
        """Wait for a cluster-wide connection lease; False: there is no more work for it."""
        while not self._stopped(dq):
            wait = await shared.open(dq.dest.key, dq.connections(self.sched.clock()))
            if wait <= 0:
                return True
            await asyncio.sleep(wait)
        return False

    async def _token(self, dq: DestQueue, shared: SharedLimits) -> bool:
        """Wait for a cluster-wide rate token; False: the work went away meanwhile."""
        while True:
            wait = await shared.token(dq.dest.key, dq.current_rate(self.sched.clock()))
            if wait <= 0:
                return not self._stopped(dq)
            await asyncio.sleep(wait)
            if self._stopped(dq):
                return False
