# SPDX-License-Identifier: MIT
"""Idle outbound connections kept per destination key for reuse.

A connection goes back to the pool after a clean transaction while it has
carried fewer than ``max_messages`` messages; it leaves on reuse (most recently
used first, so a quiet destination lets its spare connections time out), on
``idle_timeout`` (QUIT), or when the peer closes it. The scheduler limits how
many deliveries run at once per destination, so the pool never holds more than
that many connections per key. A delivery that retires a spent connection waits
for its QUIT (``release``) before it ends: the scheduler's slot must outlive the
socket, or a receiver that counts connections sees one more than the limit while
the old one says goodbye and its successor connects. It holds SMTP clients and LMTP sessions alike:
anything with the ``Reusable`` shape.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Generic, Protocol, TypeVar


class Reusable(Protocol):
    """What the pool needs of a connection."""

    messages: int  # transactions started on it

    @property
    def usable(self) -> bool: ...

    def abort(self) -> None: ...

    async def quit(self) -> None: ...


C = TypeVar("C", bound=Reusable)


class Pool(Generic[C]):
    def __init__(self, max_messages: int, idle_timeout: float) -> None:
        self.max_messages = max_messages
        self.idle_timeout = idle_timeout
        self._idle: dict[str, list[tuple[C, asyncio.TimerHandle]]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def get(self, key: str) -> C | None:
        """A live idle connection for ``key``, or None."""
        idle = self._idle.get(key)
        while idle:
            client, timer = idle.pop()
            timer.cancel()
            if client.usable:
                if not idle:
                    del self._idle[key]
                return client
            client.abort()
        self._idle.pop(key, None)
        return None

    def _put(self, key: str, client: C) -> asyncio.Task[None] | None:
        """Keep ``client`` for the next message to ``key``, or QUIT it if it is spent
        (then the QUIT in progress is returned)."""
        if not client.usable or client.messages >= self.max_messages:
            return self.retire(client)
        timer = asyncio.get_running_loop().call_later(self.idle_timeout, self._expire, key, client)
        self._idle.setdefault(key, []).append((client, timer))
        return None

    async def release(self, key: str, client: C) -> None:
        """Keep ``client`` for the next message to ``key``, or QUIT it if it is spent and
        return only once it is closed (its QUIT answered or timed out), so the caller's
        connection slot covers the whole life of the socket. The only way back into the pool."""
        closing = self._put(key, client)
        if closing is not None:
            await asyncio.shield(closing)  # cancelled: the goodbye still finishes (close() waits)

    def retire(self, client: C) -> asyncio.Task[None] | None:
        """QUIT in the background (or just close a broken connection: None)."""
        if not client.usable:
            client.abort()
            return None
        task = asyncio.get_running_loop().create_task(client.quit())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        return task

    def _expire(self, key: str, client: C) -> None:
        idle = self._idle.get(key, [])
        for i, (c, _) in enumerate(idle):
            if c is client:
                del idle[i]
                break
        if not idle:
            self._idle.pop(key, None)
        self.retire(client)

    async def drop(self, key: str, keep: int = 0) -> int:
        """QUIT the idle connections of ``key`` but the ``keep`` most recently used, and wait
        (briefly) for the goodbyes; how many. Nothing to close: no await at all."""
        idle = self._idle.get(key, [])
        cut = max(0, len(idle) - keep)
        gone, idle[:cut] = idle[:cut], []
        if not idle:
            self._idle.pop(key, None)
        closing = []
        for client, timer in gone:
            timer.cancel()
            task = self.retire(client)
            if task is not None:
                closing.append(task)
        if closing:
            with contextlib.suppress(Exception):
                await asyncio.wait(closing, timeout=3.0)
        return len(gone)

    def idle_count(self, key: str | None = None) -> int:
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(len(v) for v in self._idle.values())

    def retire_idle(self) -> None:
        """QUIT every idle connection in the background (they were opened with settings
        that may no longer hold); connections in use come back and are kept as usual."""
        for idle in self._idle.values():
            for client, timer in idle:
                timer.cancel()
                self.retire(client)
        self._idle.clear()

    async def close(self) -> None:
        """QUIT every idle connection and wait (briefly) for the goodbyes."""
        self.retire_idle()
        if self._closing:
            with contextlib.suppress(Exception):
                await asyncio.wait(list(self._closing), timeout=3.0)
