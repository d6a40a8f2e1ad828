# SPDX-License-Identifier: MIT
"""Event webhooks: the delivery log's events POSTed to ``[[webhook]]`` URLs, at least once.

``WebhookService`` is what the composition root sees: it sets the delivery log's
tap to the journal (journal.py), runs one sender per webhook (sender.py) on the
server's loop with one shared HTTP client, and stops them at shutdown. With
``[server] workers = N`` each worker journals and sends its own shard's events.

SIGHUP applies a new ``[[webhook]]`` list without a restart (``reload``): a webhook
is known by its name, so an entry whose URL, secret or other keys changed keeps
its sender and cursor and uses the new keys from its next POST; a new name starts
a sender at its saved cursor (none: the oldest event still journalled), as at
start-up; a removed name's sender stops, its backlog gauge goes to 0, and its
cursor no longer holds events on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import aiohttp

from fastmta import metrics
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
        self.senders: dict[str, Sender] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        """Start a sender per webhook; on the running loop (at start-up, or a SIGHUP's first one)."""
        self._session = aiohttp.ClientSession()
        self.journal.last = max(0, self.spool.events_after(0, 0)[2])
        self._apply(self.webhooks)

    def reload(self, webhooks: Sequence[WebhookConfig]) -> None:
        """Apply a new ``[[webhook]]`` list (see the module docstring); on the loop."""
        self.webhooks = list(webhooks)
        self.journal.configure(webhooks)
        self._apply(self.webhooks)

    def _apply(self, webhooks: list[WebhookConfig]) -> None:
        assert self._session is not None
        names = [w.name for w in webhooks]
        for name in [n for n in self.senders if n not in names]:
            self._tasks.pop(name).cancel()
            self.journal.on_commit.remove(self.senders.pop(name).notify)
            metrics.webhook_backlog_events.labels(name).set(0)
        journal = self.journal
        for w in webhooks:
            sender = self.senders.get(w.name)
            if sender is None:
                sender = Sender(w, self.spool, names, self._session, lambda: journal.last)
                self.senders[w.name] = sender
                journal.on_commit.append(sender.notify)
                self._tasks[w.name] = asyncio.get_running_loop().create_task(sender.run())
            sender.cfg = w
            sender.names = names
            sender.wake.set()  # a shorter max_delay or other events apply at once

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._session is not None:
            await self._session.close()
