# SPDX-License-Identifier: MIT
"""One destination's ready queue and traffic limits: connections, rate, suspension.

A destination (recipient domain, route next hop or "local") gets its own queue
and its own worker tasks, so a slow or dead one never holds up another. Limits
can be lowered for a while by shaping rules and come back by themselves.
Nothing here awaits or touches the spool; the shard runs the workers.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from fastmta.delivery import Destination
from fastmta.errors import Reply

if TYPE_CHECKING:
    from fastmta.scheduler.rounds import Work


class DestQueue:
    """Ready work for one destination plus the state that says how fast to send it."""

    __slots__ = (
        "dest",
        "ready",
        "workers",
        "inflight",
        "max_conn",
        "rate",
        "next_slot",
        "parked",
        "suspended_until",
        "suspend_reply",
        "suspend_class",
        "limit_until",
        "limit_conn",
        "limit_rate",
        "idle",
    )

    def __init__(self, dest: Destination, max_conn: int, rate: float) -> None:
        self.dest = dest
        self.ready: deque[Work] = deque()
        self.workers = 0  # worker tasks running for this destination (≤ connections)
        self.inflight = 0  # deliver() calls in progress
        self.max_conn = max_conn
        self.rate = rate  # messages/s, 0 = unlimited
        self.next_slot = 0.0  # earliest start of the next delivery under the rate
        self.parked = False  # messages for it were left in the spool: it was at its memory share
        self.suspended_until = 0.0
        self.suspend_reply: Reply | None = None
        self.suspend_class = "rate_limited"  # bounce class of what caused the suspension
        self.limit_until = 0.0  # a shaping "limit" lowers conn/rate until then
        self.limit_conn = 0
        self.limit_rate = 0.0
        # workers that hold a cluster lease and wait for work, its connection idle in the pool
        self.idle: deque[asyncio.Future[None]] = deque()

    def wake(self, every: bool = False) -> None:
        """Wake one idle worker (one new item needs one connection), or ``every`` one."""
        while self.idle:
            fut = self.idle.popleft()
            if not fut.done():
                fut.set_result(None)
                if not every:
                    return

    def connections(self, now: float) -> int:
        """Concurrent deliveries allowed now."""
        if now < self.limit_until:
            return min(self.max_conn, self.limit_conn)
        return self.max_conn

    def current_rate(self, now: float) -> float:
        if now < self.limit_until and self.limit_rate > 0:
            return self.limit_rate if self.rate <= 0 else min(self.rate, self.limit_rate)
        return self.rate

    def suspended(self, now: float) -> bool:
        return now < self.suspended_until

    def suspend(self, until: float, reply: Reply, bounce_class: str) -> None:
        """Stop delivering until ``until`` (a 421, a refusal, or a shaping rule)."""
        if until > self.suspended_until:
            self.suspended_until = until
            self.suspend_class = bounce_class
            self.suspend_reply = Reply(
                reply.code, reply.enhanced, "delivery temporarily suspended: " + reply.text
            )

    def limit(self, until: float, max_conn: int, rate: float) -> None:
        """Lower the connection limit and/or rate until ``until``."""
        self.limit_until = max(self.limit_until, until)
        self.limit_conn = max_conn
        self.limit_rate = rate

    def reserve(self, now: float) -> float:
        """Seconds to wait before the next delivery may start under the message rate."""
        rate = self.current_rate(now)
        if rate <= 0:
            return 0.0
        start = max(now, self.next_slot)
        self.next_slot = start + 1.0 / rate
        return start - now
