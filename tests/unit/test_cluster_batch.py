# SPDX-License-Identifier: MIT
"""The size of a batch of rate tokens: a tenth of a second at the node's pace, growing at
most twofold, at least 20, bounded by ``[cluster] batch`` and by a tenth of a second of the limit."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from fastmta.cluster.limits import BATCH_BASE, BATCH_SPAN, batch_size


def test_the_first_batch() -> None:
    assert BATCH_BASE == 20
    assert batch_size(0, 1e9, 0, 1000.0, 1000) == 20
    assert batch_size(0, 1e9, 0, 100.0, 1000) == 10  # a tenth of a second of the limit
    assert batch_size(0, 1e9, 0, 1000.0, 5) == 5  # the configured most


def test_a_fast_node_doubles_up_to_its_pace() -> None:
    sizes, last = [], 0
    for _ in range(12):  # each batch spent in 10 ms: a pace far above anything bounding it
        last = batch_size(last, 0.01, last, 1e6, 1000)
        sizes.append(last)
    assert sizes[:6] == [20, 40, 80, 160, 320, 640]
    assert sizes[-1] == 1000  # "batch" stops it


def test_at_and_past_the_configured_most() -> None:
    assert batch_size(500, 0.05, 500, 1e6, 1000) == 1000  # at the edge
    assert batch_size(600, 0.05, 600, 1e6, 1000) == 1000  # past it: cut to it
    assert batch_size(600, 0.05, 600, 1e6, 999) == 999


def test_at_and_past_a_tenth_of_the_limit() -> None:
    assert batch_size(50, 0.1, 50, 500.0, 1000) == 50  # 500 msg/s: 50 tokens, at the edge
    assert batch_size(400, 0.1, 400, 500.0, 1000) == 50  # a faster pace cannot take more
    assert batch_size(400, 0.1, 400, 501.0, 1000) == 51  # the bound rounds up
    assert batch_size(400, 0.1, 400, 0.5, 1000) == 1  # below one token a tenth: still 1


def test_a_slower_node_takes_fewer() -> None:
    assert batch_size(640, 1.0, 640, 1e6, 1000) == 64  # 640 msg/s: 64 a tenth of a second
    assert batch_size(210, 1.0, 640, 1e6, 1000) == 21  # most of the last batch lapsed unspent
    assert batch_size(10, 10.0, 20, 1e6, 1000) == 20  # 1 msg/s: never below the base


@given(
    spent=st.integers(0, 20_000),
    elapsed=st.floats(0, 1e6, allow_nan=False),
    last=st.integers(0, 10_000),
    rate=st.floats(0.001, 1e7, allow_nan=False),
    most=st.integers(1, 10_000),
)
def test_always_within_every_bound(spent: int, elapsed: float, last: int, rate: float, most: int) -> None:
    n = batch_size(spent, elapsed, last, rate, most)
    assert 1 <= n <= max(1, min(most, math.ceil(rate * BATCH_SPAN), max(BATCH_BASE, 2 * last)))
    assert n >= min(most, math.ceil(rate * BATCH_SPAN), BATCH_BASE)
