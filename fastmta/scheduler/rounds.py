# SPDX-License-Identifier: MIT
"""A delivery round of one message: its per-destination work items and their results.

When a message becomes due it is split by destination into work items (recipient
indexes). Results gather here until every item of the round has one; then the
scheduler writes all recipient states in one spool update and sends at most one
DSN per kind (failed, delayed, delivered) covering every recipient concerned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastmta.delivery.dsn import RcptReport

if TYPE_CHECKING:
    from fastmta.spool.records import Envelope, RcptState


class Round:
    """One message from the moment it is due until its results are in the spool."""

    __slots__ = ("env", "waiting", "states", "reports", "retry_at")

    def __init__(self, env: Envelope) -> None:
        self.env = env
        self.waiting = 0  # work items without a result yet
        self.states: dict[int, RcptState] = {}
        self.reports: list[RcptReport] | None = None  # DSN material, rarely needed
        self.retry_at: float | None = None  # earliest retry of a deferred recipient

    def report(self, r: RcptReport) -> None:
        if self.reports is None:
            self.reports = []
        self.reports.append(r)

    def retry(self, at: float) -> None:
        if self.retry_at is None or at < self.retry_at:
            self.retry_at = at


class Work:
    """Recipients of one message for one destination, delivered in one transaction."""

    __slots__ = ("round", "rcpts")

    def __init__(self, rnd: Round, rcpts: list[int]) -> None:
        self.round = rnd
        self.rcpts = rcpts
