# SPDX-License-Identifier: MIT
"""Retry timing and queue lifetime: pure functions of (created, attempts, now, rng).

Nothing here reads a clock or a global random generator, so every rule is a
table-testable function. Jitter spreads retries out so that a restart, or a
destination coming back after an outage, does not cause a retry storm
(chasquid ``nextDelay``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

JITTER = 0.1  # each delay is drawn from [d * (1 - JITTER), d * (1 + JITTER)]


def delay(attempts: int, schedule: Sequence[float], rng: random.Random) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (1-based); the last interval repeats."""
    base = schedule[min(max(attempts, 1), len(schedule)) - 1]
    return base * rng.uniform(1.0 - JITTER, 1.0 + JITTER)


def expires_at(created: float, lifetime: float) -> float:
    """When a message still queued stops being retried and is bounced (DSN 4.4.7)."""
    return created + lifetime


def is_expired(created: float, now: float, lifetime: float) -> bool:
    return now >= created + lifetime


def next_attempt(
    created: float, attempts: int, now: float, schedule: Sequence[float], lifetime: float, rng: random.Random
) -> float | None:
    """When to retry after a temporary failure, or None when the queue lifetime is over.

    A retry that would fall after the lifetime is pulled in to the expiry time, so
    the last attempt happens then and an expiry DSN goes out on time rather than
    one whole retry interval late.
    """
    end = created + lifetime
    if now >= end:
        return None
    return min(now + delay(attempts, schedule, rng), end)


def throttle_delay(schedule: Sequence[float], rng: random.Random) -> float:
    """How long a destination that answered 421 (or refused connections) is left alone.

    The first retry interval, jittered: a throttled destination is retried like a
    message that failed once, but every message queued to it waits together.
    """
    return delay(1, schedule, rng)
