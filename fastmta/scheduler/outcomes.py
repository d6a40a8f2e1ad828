# SPDX-License-Identifier: MIT
"""What one recipient's delivery outcome means for the queue.

A recipient leaves the queue on a 2xx (delivered) or a 5xx (bounced), stays on
a 4xx until its queue lifetime is over (deferred, then expired), and its sender
gets the DSN lines RFC 3461 asks for. This module holds those rules and nothing
else: no clock, no spool, no metrics; times, retry rules and the random generator
come in as arguments, so each rule is a row of a table test. The scheduler
applies the decisions (spool state, retry time, DSN, log line, metrics).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from fastmta.delivery import dsn as dsnlib
from fastmta.errors import Bounced, Delivered, Outcome, Reply
from fastmta.scheduler import retry
from fastmta.spool.records import DONE, FAILED, PENDING, RcptState, Recipient

EXPIRED_STATUS = "4.4.7"  # DSN status of a recipient whose queue lifetime ran out
ADMIN_BOUNCE = Reply(550, "5.0.0", "Message deleted from the queue by the administrator")
# The delivery-metric result of each log event.
RESULT = {"delivered": "delivered", "bounced": "bounced", "expired": "bounced", "deferred": "deferred"}


@dataclass(slots=True)
class Attempted:
    """What the recipients of one attempt have in common."""

    sender: str
    attempts: int  # attempts before this one
    arrived: float
    now: float
    floor: float  # a suspension's end: no retry before it (0.0: none)
    schedule: Sequence[float]  # [delivery] retry_schedule
    lifetime: float  # [delivery] max_queue_lifetime
    local: bool = False  # local delivery: a success is "delivered", not "relayed"
    remote: str = ""  # the Remote-MTA a DSN names
    dsn_passed: bool = False  # the next hop took NOTIFY: a success notice is its job
    tried: bool = True  # False: deferred untried (the destination is suspended)


class Decision(NamedTuple):
    """The recipient's log event and new state, the reply they report, when to retry, its DSN line."""

    event: str  # delivered | bounced | expired | deferred
    state: RcptState
    reply: Reply
    retry_at: float | None = None
    report: dsnlib.RcptReport | None = None


def retry_at(a: Attempted, rng: random.Random) -> float | None:
    """When a deferred recipient is tried again; None once its queue lifetime is over.

    Not before a suspension ends, nor after the expiry time (the last attempt then).
    """
    at = retry.next_attempt(a.arrived, a.attempts + 1, a.now, a.schedule, a.lifetime, rng)
    if at is None:
        return None
    return min(a.floor, retry.expires_at(a.arrived, a.lifetime)) if a.floor > at else at


def decide(o: Outcome, rc: Recipient, a: Attempted, rng: random.Random) -> Decision:
    """The decision for one recipient of an attempt."""
    reply = o.reply
    if isinstance(o, Delivered):
        report = None
        if rc.notify and not a.dsn_passed and dsnlib.wanted(a.sender, rc.notify, "delivered"):
            action = "delivered" if a.local else "relayed"
            status = dsnlib.status_of(reply)
            report = dsnlib.RcptReport(rc.addr, action, status, reply, rc.orcpt, a.remote, a.now)
        return Decision("delivered", RcptState(DONE, ""), reply, None, report)
    if isinstance(o, Bounced):
        report = None
        if dsnlib.wanted(a.sender, rc.notify, "failed"):
            status = dsnlib.status_of(reply)
            report = dsnlib.RcptReport(rc.addr, "failed", status, reply, rc.orcpt, a.remote, a.now)
        return Decision("bounced", RcptState(FAILED, str(reply)), reply, None, report)
    at = retry_at(a, rng)
    if at is None:
        report = None
        if dsnlib.wanted(a.sender, rc.notify, "failed"):
            last = a.now if a.tried else None
            report = dsnlib.RcptReport(rc.addr, "failed", EXPIRED_STATUS, reply, rc.orcpt, a.remote, last)
        return Decision("expired", RcptState(FAILED, str(reply)), reply, None, report)
    report = None
    if a.attempts == 0 and rc.notify and dsnlib.wanted(a.sender, rc.notify, "delayed"):
        until = retry.expires_at(a.arrived, a.lifetime)
        status = dsnlib.status_of(reply)
        report = dsnlib.RcptReport(rc.addr, "delayed", status, reply, rc.orcpt, a.remote, a.now, until)
    return Decision("deferred", RcptState(PENDING, str(reply)), reply, at, report)


def parse_reply(text: str, default: Reply) -> Reply:
    """``"550 5.0.0 text"`` (a stored last_error) → Reply."""
    code_s, _, rest = text.partition(" ")
    if not (len(code_s) == 3 and code_s.isdigit()):
        return default
    enh, _, txt = rest.partition(" ")
    if enh.count(".") != 2 or not enh[0].isdigit():
        enh, txt = "", rest
    return Reply(int(code_s), enh, txt)


def admin_bounce(rc: Recipient, sender: str) -> Decision:
    """``fastmta queue bounce``: the recipient fails now, untried, with the reply stored
    with it (else the administrator's), and a DSN when its sender wants one."""
    reply = parse_reply(rc.last_error, ADMIN_BOUNCE)
    report = None
    if dsnlib.wanted(sender, rc.notify, "failed"):
        report = dsnlib.RcptReport(rc.addr, "failed", dsnlib.status_of(reply), reply, rc.orcpt)
    return Decision("bounced", RcptState(FAILED, str(reply)), reply, None, report)
