# SPDX-License-Identifier: MIT
"""The feeder: pages due messages from the spool's schedule index into the scheduler.

New mail arrives through ``submit`` without any scan; everything else comes back
this way about once a second: retries, messages left by a crash or restart,
``fastmta queue flush`` / ``bounce`` done by another process (a flush also lifts the
suspension of its destinations: ``check_flush``), and messages that
``submit`` turned away because memory was full. Ids already in memory are
skipped; ids that vanished (``queue delete``) are ignored. It also keeps the
queue gauges current, once per pass instead of once per message, and writes the
"received" lines of mail ``fastmta sendmail`` put straight into the spool when the
delivery log is this server's stdout (no listener saw that mail arrive).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from fastmta import metrics
from fastmta.scheduler.core import Scheduler
from fastmta.spool.records import LISTENER_SENDMAIL, Envelope

log = logging.getLogger("fastmta.scheduler")

PAGE = 1000  # schedule-index entries per read transaction
MISSES = 200  # envelopes read in a row for full destinations end the pass (resumed next time)
READ = 250  # envelopes read per read transaction (spool.envelopes): one page of reads, bounded waste


class Feeder:
    def __init__(
        self, sched: Scheduler, interval: float = 1.0, count: Callable[[], int] | None = None
    ) -> None:
        self.sched = sched
        self.interval = interval
        self.count = count  # messages in the spool (cheap); None: the "deferred" gauge is not kept
        self.budget = max(10 * PAGE, sched.max_in_memory)  # index entries looked at per pass
        self._cursor: tuple[float, str] | None = None
        self._flush_gen = 0  # the last ``queue flush`` generation acted on (spool/flush.py)
        self._suspended: dict[str, tuple[float, str]] = {}  # administrative suspensions applied
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
                self.check_flush()
                self.check_suspensions()
                await self.scan()
                self.update_gauges()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("feeder pass failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()

    def check_flush(self) -> None:
        """One meta read: did ``queue flush`` ask for destinations to be retried now?"""
        gen, domains = self.sched.spool.flushed_since(self._flush_gen)
        if gen != self._flush_gen:
            self._flush_gen = gen
            if domains is None or domains:
                self.sched.lift(domains)

    def check_suspensions(self) -> None:
        """One meta read: apply administrative suspensions (the HTTP API's) that changed."""
        entries = self.sched.spool.suspensions()
        if entries != self._suspended:
            self._suspended = entries
            self.sched.suspend_admin(entries)

    async def scan(self) -> int:
        """Admit due messages not in memory, up to the memory bound; returns how many.

        The scan resumes where the previous one stopped and wraps around once; it
        looks at no more than ``budget`` index entries and stops after reading
        ``MISSES`` envelopes in a row that could not be taken (their destinations are
        full). Those are remembered (``still_parked``) and skipped without a read on
        later passes, so a huge backlog for one destination costs little, while the
        cursor still walks past it to everything behind.
        """
        sched = self.sched
        if sched.held:
            return 0
        spool = sched.spool
        now = sched.clock()
        start = after = self._cursor
        wrapped = start is None
        examined = admitted = misses = 0
        injected: list[Envelope] = []  # sendmail's mail, new to this server: its "received" lines
        stop = len(sched.rounds) >= sched.max_in_memory
        while not stop:
            page = spool.due(now, PAGE, after)
            todo: list[tuple[float, str]] = []
            for key in page:
                if wrapped and start is not None and key >= start:
                    sched.overflow, stop = False, True  # full circle: everything due was looked at
                    break
                examined += 1
                if examined > self.budget:
                    stop = True  # the rest next time
                    break
                todo.append(key)
            rounds = sched.rounds
            n = 0
            while n < len(todo):
                # no bigger than what could be taken before this pass must stop (little wasted reading)
                size = min(READ, sched.max_in_memory - len(rounds) + MISSES - misses)
                chunk, n = todo[n : n + size], n + size
                # ids in memory, or turned away and still would be: no envelope read
                wanted = [k[1] for k in chunk if k[1] not in rounds and not sched.still_parked(k[1])]
                envs = dict(zip(wanted, spool.envelopes(wanted), strict=True)) if wanted else {}
                full = False
                for key in chunk:
                    after = key
                    if key[1] not in envs:
                        continue
                    env = envs[key[1]]
                    if env is not None and not sched.admit(env):  # None: deleted meanwhile
                        misses += 1
                        if misses >= MISSES:
                            full = True
                            break
                        continue
                    misses = 0
                    admitted += 1
                    if env is not None and env.attempts == 0 and env.listener == LISTENER_SENDMAIL:
                        injected.append(env)
                    if len(rounds) >= sched.max_in_memory:
                        sched.overflow = full = True  # more may be due: scan again as soon as room frees up
                        break
                if full:
                    stop = True
                    break
            if not stop and len(page) < PAGE:  # the end of what is due
                if wrapped:
                    after = None
                    sched.overflow = False
                    stop = True
                else:
                    wrapped, after = True, None
            if not stop:
                await asyncio.sleep(0)  # let deliveries run between pages
        self._cursor = after
        if injected and not sched.cfg.log.file:  # a log file got the line from sendmail itself
            sched.dlog.received(injected)
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
