# SPDX-License-Identifier: MIT
"""Bounded fuzz run for CI: the corpus plus a fixed-seed batch of random streams.

Both twins see every stream in every mode; only ReplyParser may raise, and only
ParserError. The long run is `make fuzz` (tests/fuzz/fuzz_parser.py).
"""

from __future__ import annotations

import pytest

from tests.fuzz.fuzz_parser import fuzz


@pytest.mark.parametrize("seed", [2, 3])
def test_fuzz_bounded(seed: int) -> None:
    assert fuzz(seconds=4.0, seed=seed, max_rounds=800) > 0
