# SPDX-License-Identifier: MIT
"""``fastmta queue transfer --to HOST:PORT [--domain D]``: drain this node's queue into another.

Each queued message goes to the other node over SMTP (the delivery client, with the
same MAIL/RCPT parameters a delivery would send), and a recipient leaves this queue
only after the other node said 2xx for it; the message goes when none is left
pending. It works while ``serve`` runs: before sending a page of messages it holds
them in the spool (due in ``HOLD`` seconds), so this node's scheduler does not pick
them up meanwhile, and gives what was not moved its old due time back. A message
the scheduler already had in hand may go out twice; none is ever lost: a
``kill -9`` at any point leaves each message in the queue (held at most ``HOLD``
seconds) unless the other node had taken it.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import lmdb

from fastmta.config import Config
from fastmta.delivery.client import HostError, SmtpClient
from fastmta.delivery.mx import Host
from fastmta.delivery.smtp import mail_commands, rcpt_outcomes
from fastmta.errors import Delivered, Reply
from fastmta.spool import admin, ops
from fastmta.spool.records import DONE, Envelope, RcptState
from fastmta.spool.store import Store

HOLD = 300.0  # seconds a message being transferred is kept from this node's own scheduler
PAGE = 100  # messages held (and released) per write transaction

EX_TEMPFAIL = 75


@dataclass
class Tally:
    messages: int = 0  # moved whole (gone from this queue)
    recipients: int = 0  # recipients the other node took
    left: list[str] = field(default_factory=list)  # "<id> <rcpt>: <reply>" for each refusal


class Transfer:
    """One connection to the other node, reused across messages (reopened when spent)."""

    def __init__(self, cfg: Config, to: tuple[str, int], domain: str | None) -> None:
        self.cfg = cfg
        self.host = Host(to[0], to[0], to[1])
        self.domain = domain.lower().rstrip(".") if domain else None
        self.client: SmtpClient | None = None
        self.tally = Tally()

    def wanted(self, env: Envelope) -> list[int]:
        """Indexes of the recipients to move: the pending ones (at ``--domain`` when given)."""
        d = self.domain
        return [
            i
            for i, r in enumerate(env.rcpts)
            if r.pending and (d is None or r.addr.rpartition("@")[2].lower().rstrip(".") == d)
        ]

    async def run(self, stores: list[Store]) -> None:
        try:
            for store in stores:
                for page in _pages(self._candidates(store)):
                    await self._page(store, page)
        finally:
            if self.client is not None:
                await self.client.quit()

    def _candidates(self, store: Store) -> Iterator[str]:
        for env in admin.iter_envelopes(store):
            if self.wanted(env):
                yield env.id

    async def _page(self, store: Store, ids: list[str]) -> None:
        held = store.write_growing(lambda txn: _hold(store, txn, ids, time.time() + HOLD), 1024**2)
        try:
            while held:
                env, old_due = held[0]
                body = store.body(env.id.encode("ascii"))
                idx = self.wanted(env)
                moved, lost = await self._send(env, idx, body) if body is not None and idx else ({}, False)
                # one commit per message: a kill -9 sends at most the message in flight twice
                settle = functools.partial(self._settle, store, env=env, old_due=old_due, moved=moved)
                store.write_growing(settle, 1024**2)
                held.pop(0)
                if lost:
                    raise HostError(Reply(421, "4.4.2", f"{self.host} closed the connection"), "lost")
        finally:  # the other node went away: what was not sent gets its due time back
            if held:
                store.write_growing(lambda txn: _release(store, txn, held), 1024**2)

    async def _send(self, env: Envelope, idx: list[int], body: bytes) -> tuple[dict[int, RcptState], bool]:
        """One transaction: the recipients the other node took, and whether the connection broke."""
        client = await self._connected()
        mail, rcpts = mail_commands(client, env, idx, body)
        tx = await client.send(mail, rcpts, body, reset=client.needs_reset)
        moved: dict[int, RcptState] = {}
        for i, outcome in rcpt_outcomes(tx, idx).items():
            if isinstance(outcome, Delivered):
                moved[i] = RcptState(DONE, "")
            else:
                self.tally.left.append(f"{env.id} <{env.rcpts[i].addr}>: {outcome.reply}")
        return moved, bool(tx.error)

    async def _connected(self) -> SmtpClient:
        c = self.client
        if c is not None and c.usable and c.messages < self.cfg.delivery.max_messages_per_connection:
            return c
        if c is not None:
            await c.quit()
        d = self.cfg.delivery
        c = await SmtpClient.open(self.host, self.cfg.hostname, d.connect_timeout, d.command_timeout)
        self.client = c
        return c

    def _settle(self, store: Store, txn: lmdb.Transaction, *, env: Envelope, old_due: float,
                moved: dict[int, RcptState]) -> None:  # fmt: skip
        """Mark what the other node took; a message still queued gets its due time back."""
        id_b = env.id.encode("ascii")
        if moved:
            ops.update(store, txn, id_b, moved, None, 0)
            self.tally.recipients += len(moved)
        if ops.load(store, txn, id_b) is None:
            self.tally.messages += bool(moved)
        else:
            ops.reschedule(store, txn, id_b, old_due)


def _release(store: Store, txn: lmdb.Transaction, held: list[tuple[Envelope, float]]) -> None:
    for env, old_due in held:
        ops.reschedule(store, txn, env.id.encode("ascii"), old_due)


def _hold(store: Store, txn: lmdb.Transaction, ids: list[str], until: float) -> list[tuple[Envelope, float]]:
    """Make each message due at ``until``; (its envelope as of now, its old due time)."""
    out = []
    for msg_id in ids:
        env = ops.load(store, txn, msg_id.encode("ascii"))
        if env is not None:
            out.append((env, env.next_attempt))
            ops.reschedule(store, txn, msg_id.encode("ascii"), until)
    return out


def _pages(ids: Iterator[str]) -> Iterator[list[str]]:
    page: list[str] = []
    for msg_id in ids:
        page.append(msg_id)
        if len(page) >= PAGE:
            yield page
            page = []
    if page:
        yield page


def run(cfg: Config, stores: list[Store], to: tuple[str, int], domain: str | None) -> int:
    """The command: 0 everything moved, 1 some recipients refused (left here), 75 the other
    node could not be reached or went away (what it had taken is gone from here)."""
    job = Transfer(cfg, to, domain)
    status = 0
    try:
        asyncio.run(job.run(stores))
    except HostError as e:
        print(f"fastmta queue transfer: {to[0]}:{to[1]}: {e.reply}", file=sys.stderr)
        status = EX_TEMPFAIL
    t = job.tally
    for line in t.left:
        print(f"fastmta queue transfer: left {line}", file=sys.stderr)
    print(f"transferred {t.messages} message{'s' if t.messages != 1 else ''} "
          f"({t.recipients} recipient{'s' if t.recipients != 1 else ''}) to {to[0]}:{to[1]}",
          file=sys.stderr)  # fmt: skip
    return status or (1 if t.left else 0)
