# SPDX-License-Identifier: MIT
"""One ``[[webhook]]``: POSTs journalled events in batches, at least once, in order.

The sender reads the journal after its saved cursor in ranges, POSTs up to
``batch_size`` events as one JSON array (the stored lines joined: no JSON is
encoded again; signed with ``X-Fastmta-Signature: sha256=<hex HMAC>`` when a
``secret`` is set), and saves the cursor durably after a 2xx, without waiting
for that commit before the next POST. A short batch waits until its oldest
event has waited ``max_delay``; a full one goes at once. A failed,
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
from collections import deque
from collections.abc import Callable

import aiohttp

from fastmta import metrics
from fastmta.config import WebhookConfig
from fastmta.spool import Spool

log = logging.getLogger("fastmta.webhook")

SIGNATURE_HEADER = "X-Fastmta-Signature"
MAX_BACKOFF = 60.0
IDLE_POLL = 1.0  # s: an idle sender looks again this often even without a wake-up
READ_AHEAD = 1000  # journal entries read at once (at least 4 batches): one read transaction per range


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
        self.cfg = cfg  # replaced on SIGHUP (WebhookService.reload); read afresh by each step
        self.spool = spool
        self.names = names  # every configured webhook: events all of them have are deleted
        self.session = session
        self.journal_last = last  # the journal's last committed sequence number
        self.wake = asyncio.Event()
        self.seq = 0  # the acknowledged cursor (saved by an ack that may still be committing)
        self.buf: deque[tuple[int, bytes]] = deque()  # read from the journal, not yet sent
        self.read_to = 0  # the last sequence number read into ``buf``
        self.last = 0  # the journal's last number as the last read saw it
        self.since: float | None = None  # when the oldest unsent event was first seen (monotonic)
        self.rng = random.Random()
        name = cfg.name
        self.m_delivered = metrics.webhook_events_total.labels(name, "delivered")
        self.m_failed = metrics.webhook_events_total.labels(name, "failed")
        self.m_dropped = metrics.webhook_events_total.labels(name, "dropped")
        self.m_backlog = metrics.webhook_backlog_events.labels(name)
        self.m_seconds = metrics.webhook_delivery_seconds.labels(name)

    def notify(self) -> None:
        """The journal committed more events: note when waiting for them began, wake up."""
        if self.since is None:
            self.since = time.monotonic()
        self.wake.set()

    async def run(self) -> None:
        self.seq = self.read_to = self.spool.events_cursor(self.cfg.name)
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
        """At most one POST: True sent (or nothing to send), False failed, None waited."""
        cfg = self.cfg
        if len(self.buf) < cfg.batch_size:
            self._read(max(cfg.batch_size * 4, READ_AHEAD))
        if not self.buf:
            self.since = None
            await self._wait(IDLE_POLL)
            return None
        if self.since is None:
            self.since = time.monotonic()
        batch, taken, upto = self._take()
        if not batch:  # nothing for this webhook: move past what it does not want
            self._done(taken, upto, time.monotonic())
            return True
        # a short batch waits for more until its oldest event has waited max_delay
        if len(batch) < cfg.batch_size and taken == len(self.buf) and upto >= self.last:
            if await self._fill(self.since + cfg.max_delay, cfg.batch_size - len(batch)):
                return None
            if self.journal_last() > self.read_to:  # what came in while it waited goes along
                self._read(max(cfg.batch_size * 4, READ_AHEAD))
                batch, taken, upto = self._take()
        started = time.monotonic()
        if not await self._post(batch):
            return False
        self._done(taken, upto, started)
        return True

    def _take(self) -> tuple[list[bytes], int, int]:
        """The next batch from ``buf``: (the lines this webhook wants, up to ``batch_size``;
        how many entries they span; the sequence number of the last of them)."""
        wanted, size = self.cfg.events, self.cfg.batch_size
        batch: list[bytes] = []
        upto, taken = self.seq, 0
        for seq, value in self.buf:
            event, _, line = value.partition(b"\n")
            upto = seq
            taken += 1
            if event.decode() in wanted:
                batch.append(line)
                if len(batch) >= size:
                    break
        return batch, taken, upto

    def _read(self, limit: int) -> None:
        """Read the next range of the journal into ``buf``; count what was dropped meanwhile."""
        items, first, last = self.spool.events_after(self.read_to, limit)
        self.last = last
        floor = max(first - 1, last - self.cfg.max_backlog)
        if floor > self.seq:  # gone past max_backlog (or pruned for another webhook's bound)
            self.m_dropped.inc(floor - self.seq)
            log.warning("webhook %s: %d event(s) dropped past max_backlog", self.cfg.name, floor - self.seq)
            self.seq = floor
            while self.buf and self.buf[0][0] <= floor:
                self.buf.popleft()
            items = [it for it in items if it[0] > floor]
        self.buf.extend(items)
        self.read_to = max(self.read_to, floor, items[-1][0] if items else 0)
        self.m_backlog.set(max(0, last - self.seq))

    def _done(self, taken: int, upto: int, started: float) -> None:
        """``taken`` events up to ``upto`` are sent (or skipped): move on and save the cursor.

        The cursor is saved without waiting for its commit: the next batch goes out
        meanwhile. A crash before the commit sends these events again (at least once).
        """
        for _ in range(taken):
            self.buf.popleft()
        self.seq = upto
        self.m_backlog.set(max(0, self.last - upto))
        # what is left came in after this batch was read, so it has waited since then at most
        self.since = started if (self.buf or self.journal_last() > upto) else None
        self.spool.ack_events(self.cfg.name, upto, self.names).add_done_callback(self._acked)

    def _acked(self, fut: asyncio.Future[object]) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            log.warning("webhook %s: cursor not saved (%s); events may be sent again", self.cfg.name,
                        fut.exception())  # fmt: skip

    async def _fill(self, deadline: float, missing: int) -> bool:
        """Wait until ``missing`` more events are journalled beyond what was read (True: read
        them) or ``deadline`` passes (False: send what there is)."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await self._wait(left)
            if self.journal_last() - self.read_to >= missing:
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
