# SPDX-License-Identifier: MIT
"""What the scheduler needs of the spool, as a ``typing.Protocol``.

``fastmta.spool.Spool`` is the one implementation; tests hand in small fakes.
Naming the few calls here keeps the scheduler's use of the spool visible (it
reads schedule pages, envelopes and bodies, marks recipient states, queues DSNs)
and type-checked, without tying it to the LMDB store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from fastmta.delivery import BodySource
from fastmta.errors import Reply
from fastmta.spool.records import Envelope, RcptState


class QueueSpool(BodySource, Protocol):
    def due(self, now: float, limit: int, after: tuple[float, str] | None = None) -> list[tuple[float, str]]:
        """Up to ``limit`` (due time, id) pairs due by ``now``, in due order, after ``after``."""
        ...

    def envelopes(self, msg_ids: Sequence[str]) -> list[Envelope | None]:
        """The envelope of each id (None: gone), in one read."""
        ...

    def update_many(
        self, items: Iterable[tuple[str, Mapping[int, RcptState | str], float | None]], attempts_inc: int = 1
    ) -> list[asyncio.Future[Any]]:
        """New recipient states and next due time of many messages, one future each."""
        ...

    def put(self, envelope: Envelope, body: bytes, head: bytes = b"") -> asyncio.Future[str]:
        """Queue a new message (a DSN); resolves to its id once committed."""
        ...

    def flushed_since(self, seen: int) -> tuple[int, frozenset[str] | None]:
        """``queue flush`` generation and the domains flushed after ``seen`` (None: all)."""
        ...

    def suspensions(self) -> dict[str, tuple[float, str]]:
        """Administrative suspensions in force: domain → (until, reason) (spool/suspend.py)."""
        ...

    def count(self) -> int:
        """Messages in the spool (cheap)."""
        ...


class SharedLimits(Protocol):
    """Per-destination limits held with other nodes (``fastmta.cluster.limits.Cluster``).

    Absent (None) on a single node: then the scheduler's own counters are the limits.
    Each call answers from memory when it can; the few that ask Redis happen once per
    connection or per batch of rate tokens, never per message.
    """

    async def open(self, key: str, limit: int) -> float:
        """0: one more connection to ``key`` may run (a lease covers it); else seconds to wait."""
        ...

    def close_slot(self, key: str) -> None:
        """A worker that ``open`` admitted has ended."""
        ...

    def leases(self, key: str) -> int:
        """Connection leases of ``key`` this node holds now."""
        ...

    def wanted(self, key: str) -> bool:
        """Another node waits for a lease of ``key``: workers give theirs back at the end of a
        connection's worth of messages, and idle ones at once, instead of keeping them."""
        ...

    async def token(self, key: str, rate: float) -> float:
        """0: one message to ``key`` may start (``rate`` ≤ 0: unlimited); else seconds to wait."""
        ...

    def suspend(self, key: str, seconds: float, reply: Reply, bounce_class: str) -> None:
        """Tell every node to suspend ``key``."""
        ...

    def limit(self, key: str, seconds: float, connections: int, rate: float) -> None:
        """Tell every node to lower ``key``'s limits."""
        ...

    def resume(self, key: str) -> None:
        """Tell every node to end ``key``'s suspension."""
        ...
