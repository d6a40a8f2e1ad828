# SPDX-License-Identifier: MIT
"""One ``[[webhook]]``: POSTs journalled events in batches, at least once, in order.

The sender reads the journal after its saved cursor, POSTs up to ``batch_size``
events as one JSON array (signed with ``X-Fastmta-Signature: sha256=<hex HMAC>``
when a ``secret`` is set), and saves the cursor durably after a 2xx. A failed,
non-2xx or timed-out POST is retried with exponential backoff (1 s doubling to
``MAX_BACKOFF``, ±20 % jitter); the events wait on disk meanwhile, so a restart
or a ``kill -9`` resumes at the cursor and at worst sends a batch twice.
Delivery never waits for it: the sender only reads what the scheduler journalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Callable

import aiohttp

from fastmta import metrics
from fastmta.config import WebhookConfig
from fastmta.spool import Spool

log = logging.getLogger("fastmta.webhook")

SIGNATURE_HEADER = "X-Fastmta-Signature"
MAX_BACKOFF = 60.0
IDLE_POLL = 1.0  # s: an idle sender looks again this often even without a wake-up


def signature(secret: str, body: bytes) -> str:
    """The header value for ``body``: ``sha256=`` and the hex HMAC-SHA256 keyed by ``secret``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Sender:
    def __init__(
        self,
        cfg: WebhookConfig,
        spool: Spool,
        names: list[str],
        session: aiohttp.ClientSession,
        last: Callable[[], int] = lambda: 0,
    ) -> None:
        self.cfg = cfg
        self.spool = spool
        self.names = names  # every configured webhook: events all of them have are deleted
        self.session = session
        self.journal_last = last  # the journal's last committed sequence number
        self.wake = asyncio.Event()
        self.seq = 0  # the acknowledged cursor
        self.rng = random.Random()
        name = cfg.name
        self.m_delivered = metrics.webhook_events_total.labels(name, "delivered")
        self.m_failed = metrics.webhook_events_total.labels(name, "failed")
        self.m_dropped = metrics.webhook_events_total.labels(name, "dropped")
        self.m_backlog = metrics.webhook_backlog_events.labels(name)
        self.m_seconds = metrics.webhook_delivery_seconds.labels(name)

    async def run(self) -> None:
        self.seq = self.spool.events_cursor(self.cfg.name)
        backoff = 0.0
        while True:
            try:
                sent = await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook %s: pass failed", self.cfg.name)
                sent = False
            if sent is False:
                backoff = min(MAX_BACKOFF, max(1.0, backoff * 2))
                await asyncio.sleep(backoff * self.rng.uniform(0.8, 1.2))
            elif sent is True:
                backoff = 0.0

    async def step(self) -> bool | None:
        """One read and at most one POST: True sent (or nothing to send), False failed, None waited."""
        cfg = self.cfg
        items, first, last = self.spool.events_after(self.seq, max(cfg.batch_size * 4, 1000))
        self._skip_dropped(first, last)
        self.m_backlog.set(max(0, last - self.seq))
        if not items:
            await self._wait(IDLE_POLL)
            return None
        wanted = cfg.events
        batch: list[bytes] = []
        upto = self.seq
        for seq, value in items:
            event, _, line = value.partition(b"\n")
            upto = seq
            if event.decode() in wanted:
                batch.append(line)
                if len(batch) >= cfg.batch_size:
                    break
        if not batch:  # nothing for this webhook: move past what it does not want
            await self._ack(upto)
            return True
        # a short batch: wait up to max_delay for more (a full batch goes at once)
        if len(batch) < cfg.batch_size and upto >= last and await self._fill():
            return None
        if not await self._post(batch):
            return False
        await self._ack(upto)
        return True

    def _skip_dropped(self, first: int, last: int) -> None:
        """Events past ``max_backlog`` (or pruned for another webhook's bound) are gone: count them."""
        floor = max(first - 1, last - self.cfg.max_backlog)
        if floor > self.seq:
            self.m_dropped.inc(floor - self.seq)
            log.warning("webhook %s: %d event(s) dropped past max_backlog", self.cfg.name, floor - self.seq)
            self.seq = floor

    async def _fill(self) -> bool:
        """Wait for a full batch or ``max_delay``; True when more events came in meanwhile."""
        deadline = time.monotonic() + self.cfg.max_delay
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await self._wait(left)
            if self.journal_last() - self.seq >= self.cfg.batch_size:
                return True

    async def _wait(self, timeout: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.wake.wait(), timeout)
        self.wake.clear()

    async def _post(self, batch: list[bytes]) -> bool:
        cfg = self.cfg
        body = b"[" + b",".join(batch) + b"]"
        headers = {"Content-Type": "application/json", "User-Agent": "fastmta-webhook"}
        if cfg.secret:
            headers[SIGNATURE_HEADER] = signature(cfg.secret, body)
        t0 = time.perf_counter()
        try:
            async with self.session.post(
                cfg.url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=cfg.timeout)
            ) as resp:
                await resp.read()
                ok = 200 <= resp.status < 300
                why = f"HTTP {resp.status}"
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            ok, why = False, type(e).__name__ if not str(e) else str(e)
        self.m_seconds.observe(time.perf_counter() - t0)
        if ok:
            self.m_delivered.inc(len(batch))
        else:
            self.m_failed.inc(len(batch))
            log.warning("webhook %s: %d event(s) not accepted (%s); retrying", cfg.name, len(batch), why)
        return ok

    async def _ack(self, upto: int) -> None:
        await self.spool.ack_events(self.cfg.name, upto, self.names)
        self.seq = upto
