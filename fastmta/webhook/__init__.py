# SPDX-License-Identifier: MIT
"""Event webhooks: the delivery log's events POSTed to ``[[webhook]]`` URLs, at least once.

``WebhookService`` is what the composition root sees: it sets the delivery log's
tap to the journal (journal.py), runs one sender per webhook (sender.py) on the
server's loop with one shared HTTP client, and stops them at shutdown. With
``[server] workers = N`` each worker journals and sends its own shard's events.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import aiohttp

from fastmta.config import WebhookConfig
from fastmta.deliverylog import DeliveryLog
from fastmta.spool import Spool
from fastmta.webhook.journal import Journal
from fastmta.webhook.sender import Sender


class WebhookService:
    def __init__(self, webhooks: Sequence[WebhookConfig], spool: Spool, dlog: DeliveryLog) -> None:
        self.webhooks = list(webhooks)
        self.spool = spool
        self.journal = Journal(spool, webhooks)
        dlog.tap = self.journal.record
        self.senders: list[Sender] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        names = [w.name for w in self.webhooks]
        journal = self.journal
        self.journal.last = max(0, self.spool.events_after(0, 0)[2])
        for w in self.webhooks:
            sender = Sender(w, self.spool, names, self._session, lambda: journal.last)
            journal.on_commit.append(sender.wake.set)
            self.senders.append(sender)
            self._tasks.append(asyncio.get_running_loop().create_task(sender.run()))

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._session is not None:
            await self._session.close()
