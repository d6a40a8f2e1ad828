# SPDX-License-Identifier: MIT
"""The outcome rules as a table: outcome, attempts, age and NOTIFY → what the queue does."""

from __future__ import annotations

import random
from typing import Any

import pytest

from fastmta.delivery.dsn import RcptReport
from fastmta.errors import Bounced, Deferred, Delivered, Outcome, Reply
from fastmta.scheduler import outcomes
from fastmta.spool.records import BOUNCE, DONE, FAILED, PENDING, Recipient

ARRIVED = 1_000_000.0
SCHEDULE = (60.0, 300.0, 900.0)
LIFETIME = 3600.0
EXPIRY = ARRIVED + LIFETIME
REMOTE = "mx.b.test"

OK = Delivered(Reply(250, "2.0.0", "Ok: queued"))
NO_SUCH_USER = Bounced(Reply(550, "5.1.1", "no such user"), "invalid_recipient")
BARE_550 = Bounced(Reply(550, "", "go away"), "other")
BUSY = Deferred(Reply(451, "4.3.0", "try later"), "other")
THROTTLED = Deferred(Reply(421, "4.7.0", "too fast"), "throttled")


class NoJitter(random.Random):
    """Retry delays exactly as scheduled, so a row can name the retry time."""

    def uniform(self, a: float, b: float) -> float:
        return 1.0


def attempted(age: float, attempts: int = 0, **kw: Any) -> outcomes.Attempted:
    fields: dict[str, Any] = dict(
        sender="s@a.test",
        attempts=attempts,
        arrived=ARRIVED,
        now=ARRIVED + age,
        floor=0.0,
        schedule=SCHEDULE,
        lifetime=LIFETIME,
        remote=REMOTE,
    )
    return outcomes.Attempted(**(fields | kw))


def report(
    action: str, status: str, reply: Reply, last: float | None, until: float | None = None
) -> RcptReport:
    return RcptReport("r@b.test", action, status, reply, "rfc822;r@b.test", REMOTE, last, until)


# (id, outcome, attempts before this one, age in s, NOTIFY, other Attempted fields,
#  expected event, state, retry time, DSN line)
Row = tuple[str, Outcome, int, float, str, dict[str, Any], str, str, float | None, RcptReport | None]
ROWS: list[Row] = [
    ("2xx: done, no notice by default", OK, 0, 0, "", {}, "delivered", DONE, None, None),
    ("2xx + NOTIFY=SUCCESS: relayed notice", OK, 3, 500, "SUCCESS", {},
     "delivered", DONE, None, report("relayed", "2.0.0", OK.reply, ARRIVED + 500)),
    ("2xx + NOTIFY=SUCCESS, local: delivered notice", OK, 0, 0, "SUCCESS,FAILURE", {"local": True},
     "delivered", DONE, None, report("delivered", "2.0.0", OK.reply, ARRIVED)),
    ("2xx + NOTIFY=SUCCESS, next hop took NOTIFY: its job", OK, 0, 0, "SUCCESS", {"dsn_passed": True},
     "delivered", DONE, None, None),
    ("2xx + NOTIFY=SUCCESS, null sender: never", OK, 0, 0, "SUCCESS", {"sender": ""},
     "delivered", DONE, None, None),
    ("5xx: failed, DSN by default", NO_SUCH_USER, 0, 0, "", {},
     "bounced", FAILED, None, report("failed", "5.1.1", NO_SUCH_USER.reply, ARRIVED)),
    ("5xx without enhanced code: status 5.0.0", BARE_550, 2, 700, "", {},
     "bounced", FAILED, None, report("failed", "5.0.0", BARE_550.reply, ARRIVED + 700)),
    ("5xx + NOTIFY=NEVER: no DSN", NO_SUCH_USER, 0, 0, "NEVER", {}, "bounced", FAILED, None, None),
    ("5xx, null sender: no DSN", NO_SUCH_USER, 0, 0, "", {"sender": ""}, "bounced", FAILED, None, None),
    ("5xx on the last second of the lifetime: still a bounce", NO_SUCH_USER, 4, LIFETIME, "NEVER", {},
     "bounced", FAILED, None, None),
    ("4xx, first attempt: first interval", BUSY, 0, 0, "", {}, "deferred", PENDING, ARRIVED + 60, None),
    ("4xx + NOTIFY=DELAY, first attempt: delayed notice", BUSY, 0, 0, "DELAY", {},
     "deferred", PENDING, ARRIVED + 60, report("delayed", "4.3.0", BUSY.reply, ARRIVED, EXPIRY)),
    ("4xx + NOTIFY=DELAY, later attempt: no second notice", BUSY, 1, 60, "DELAY", {},
     "deferred", PENDING, ARRIVED + 60 + 300, None),
    ("4xx, third attempt: third interval", BUSY, 2, 400, "", {},
     "deferred", PENDING, ARRIVED + 400 + 900, None),
    ("4xx past the schedule: the last interval repeats", BUSY, 7, 1000, "", {},
     "deferred", PENDING, ARRIVED + 1000 + 900, None),
    ("4xx near the end: retried at the expiry time", BUSY, 3, LIFETIME - 50, "", {},
     "deferred", PENDING, EXPIRY, None),
    ("421 while suspended: not before the suspension ends", THROTTLED, 0, 0, "", {"floor": ARRIVED + 1000},
     "deferred", PENDING, ARRIVED + 1000, None),
    ("suspension past the lifetime: the expiry time", THROTTLED, 0, 0, "", {"floor": EXPIRY + 5000},
     "deferred", PENDING, EXPIRY, None),
    ("suspension over before the retry: the retry", BUSY, 0, 10, "", {"floor": ARRIVED + 20},
     "deferred", PENDING, ARRIVED + 10 + 60, None),
    ("4xx at the lifetime: expired, 4.4.7 DSN", BUSY, 5, LIFETIME, "", {},
     "expired", FAILED, None, report("failed", "4.4.7", BUSY.reply, EXPIRY)),
    ("4xx past the lifetime, untried: no last attempt", THROTTLED, 5, LIFETIME + 1, "", {"tried": False},
     "expired", FAILED, None, report("failed", "4.4.7", THROTTLED.reply, None)),
    ("4xx past the lifetime, null sender: no DSN", BUSY, 5, LIFETIME + 1, "", {"sender": ""},
     "expired", FAILED, None, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("outcome", "attempts", "age", "notify", "extra", "event", "state", "retry_at", "dsn"),
    [row[1:] for row in ROWS],
    ids=[row[0] for row in ROWS],
)
def test_decision_table(
    outcome: Outcome,
    attempts: int,
    age: float,
    notify: str,
    extra: dict[str, Any],
    event: str,
    state: str,
    retry_at: float | None,
    dsn: RcptReport | None,
) -> None:
    rc = Recipient("r@b.test", orcpt="rfc822;r@b.test", notify=notify)
    d = outcomes.decide(outcome, rc, attempted(age, attempts, **extra), NoJitter())
    assert (d.event, d.state.state, d.retry_at, d.report) == (event, state, retry_at, dsn)
    assert d.reply == outcome.reply
    assert d.state.last_error == ("" if state == DONE else str(outcome.reply))
    assert outcomes.RESULT[d.event] in ("delivered", "deferred", "bounced")


def test_retry_is_jittered_within_ten_percent() -> None:
    times = {outcomes.retry_at(attempted(0), random.Random(seed)) for seed in range(50)}
    assert len(times) > 1
    assert all(ARRIVED + 54 <= t <= ARRIVED + 66 for t in times if t is not None)


ADMIN = outcomes.ADMIN_BOUNCE


@pytest.mark.parametrize(
    ("last_error", "sender", "reply", "status"),
    [
        ("", "s@a.test", ADMIN, "5.0.0"),
        ("554 5.7.1 relay refused", "s@a.test", Reply(554, "5.7.1", "relay refused"), "5.7.1"),
        ("451 try again later", "s@a.test", Reply(451, "", "try again later"), "4.0.0"),
        ("not a reply", "s@a.test", ADMIN, "5.0.0"),
        ("55 5.0.0 short code", "s@a.test", ADMIN, "5.0.0"),
        ("", "", ADMIN, None),
    ],
)
def test_admin_bounce(last_error: str, sender: str, reply: Reply, status: str | None) -> None:
    rc = Recipient("r@b.test", BOUNCE, orcpt="rfc822;r@b.test", last_error=last_error)
    d = outcomes.admin_bounce(rc, sender)
    assert (d.event, d.state.state, d.state.last_error, d.reply, d.retry_at) == (
        "bounced", FAILED, str(reply), reply, None
    )  # fmt: skip
    expected = None if status is None else RcptReport("r@b.test", "failed", status, reply, "rfc822;r@b.test")
    assert d.report == expected
