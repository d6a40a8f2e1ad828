# SPDX-License-Identifier: MIT
"""Retry schedule, jitter and queue lifetime: pure functions, table-tested."""

from __future__ import annotations

import random

import pytest

from fastmta.scheduler import retry

SCHEDULE = (60.0, 300.0, 900.0)


class Fixed(random.Random):
    """An rng whose uniform() returns the low, middle or high end."""

    def __init__(self, where: float) -> None:
        super().__init__(0)
        self.where = where

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.where


@pytest.mark.parametrize(("attempts", "base"), [(0, 60), (1, 60), (2, 300), (3, 900), (4, 900), (50, 900)])
def test_schedule_index_and_last_interval_repeats(attempts: int, base: float) -> None:
    assert retry.delay(attempts, SCHEDULE, Fixed(0.5)) == pytest.approx(base)


def test_jitter_bounds() -> None:
    assert retry.delay(1, SCHEDULE, Fixed(0.0)) == pytest.approx(60 * (1 - retry.JITTER))
    assert retry.delay(1, SCHEDULE, Fixed(1.0)) == pytest.approx(60 * (1 + retry.JITTER))
    rng = random.Random(42)
    draws = [retry.delay(2, SCHEDULE, rng) for _ in range(1000)]
    assert 270 <= min(draws) < 280 and 320 < max(draws) <= 330
    assert len(set(draws)) > 900  # spread out: no retry storm after a restart


def test_seeded_rng_is_reproducible() -> None:
    a = [retry.delay(1, SCHEDULE, random.Random(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]


def test_next_attempt_inside_lifetime() -> None:
    assert retry.next_attempt(1000, 1, 1010, SCHEDULE, 3600, Fixed(0.5)) == pytest.approx(1070)


def test_next_attempt_pulled_in_to_expiry() -> None:
    # the retry would land after the lifetime: the last attempt happens at expiry instead
    assert retry.next_attempt(1000, 3, 4000, SCHEDULE, 3600, Fixed(0.5)) == 4600


@pytest.mark.parametrize("now", [4600, 4601, 10**6])
def test_expired_means_no_next_attempt(now: float) -> None:
    assert retry.next_attempt(1000, 3, now, SCHEDULE, 3600, Fixed(0.5)) is None
    assert retry.is_expired(1000, now, 3600)


def test_not_expired_just_before_lifetime() -> None:
    assert not retry.is_expired(1000, 4599.999, 3600)
    assert retry.expires_at(1000, 3600) == 4600


def test_throttle_delay_is_the_first_interval_jittered() -> None:
    assert retry.throttle_delay(SCHEDULE, Fixed(0.5)) == pytest.approx(60)
