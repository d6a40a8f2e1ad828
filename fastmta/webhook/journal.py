# SPDX-License-Identifier: MIT
"""The loop's end of the event journal: delivery-log batches → durable events (spool/events.py).

It is the delivery log's tap: it sees each batch of records with their encoded
lines, keeps the events some webhook wants and sends them to the spool writer in
one operation, before the scheduler sends the spool updates of the same rounds.
Per batch: one filter pass and one frame to the writer; nothing at all when no
``[[webhook]]`` is configured (the tap is not set).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from fastmta.config import WebhookConfig
from fastmta.spool import Spool

log = logging.getLogger("fastmta.webhook")


class Journal:
    def __init__(self, spool: Spool, webhooks: Sequence[WebhookConfig]) -> None:
        self.spool = spool
        self.configure(webhooks)
        self.last = 0  # the last sequence number known committed
        self.on_commit: list[Callable[[], None]] = []

    def configure(self, webhooks: Sequence[WebhookConfig]) -> None:
        """The events to keep and how many at most, from the ``[[webhook]]`` list (none: nothing)."""
        self.wanted = frozenset(e for w in webhooks for e in w.events)
        self.keep = max((w.max_backlog for w in webhooks), default=1)

    def record(self, records: list[dict[str, Any]], lines: list[str]) -> None:
        """The delivery log's tap: journal the wanted events of one batch."""
        wanted = self.wanted
        items = [f"{r['event']}\n{line}".encode() for r, line in zip(records, lines, strict=True)
                 if r.get("event") in wanted]  # fmt: skip
        if not items:
            return
        try:
            fut = self.spool.append_events(items, self.keep)
        except Exception as e:  # spool closed or broken: the events cannot be kept
            log.error("webhook events not journalled (%d): %s", len(items), e)
            return
        fut.add_done_callback(self._committed)

    def _committed(self, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            log.error(
                "webhook events not journalled: %s", "cancelled" if fut.cancelled() else fut.exception()
            )
            return
        self.last = max(self.last, int(fut.result()))
        for wake in self.on_commit:
            wake()
