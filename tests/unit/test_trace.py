# SPDX-License-Identifier: MIT
"""Hop counting over the header block: exact cases, then Hypothesis against a line-by-line model."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastmta.smtp.trace import hops


@pytest.mark.parametrize(
    ("message", "n"),
    [
        (b"", 0),
        (b"\r\n", 0),
        (b"\r\nReceived: in the body\r\n", 0),  # no header block at all
        (b"Received: x\r\n\r\n", 1),
        (b"received: x\r\nDELIVERED-TO: u@a.test\r\nReCeIvEd: y\r\n\r\n", 3),
        (b"Received: x\r\n\tfrom\r\n Received: folded, not a field\r\n\r\n", 1),
        (b"X-Received: x\r\nReceived-SPF: pass\r\nDelivered-To-X: y\r\n\r\n", 0),
        (b"Subject: a\r\n\r\nReceived: x\r\nDelivered-To: y\r\n", 0),  # the body never counts
        (b"Subject: a\r\nReceived: x\r\n", 1),  # no empty line: everything is header
        (b"Received: x\r\n", 1),
    ],
)
def test_hops(message: bytes, n: int) -> None:
    assert hops(message) == n


def _model(message: bytes) -> int:
    """The same count, field by field, the slow obvious way."""
    n = 0
    for line in message.split(b"\r\n"):
        if line == b"":
            break
        name = line.partition(b":")[0].lower()
        if b":" in line and name in (b"received", b"delivered-to"):
            n += 1
    return n


_FIELDS = [b"Received: x", b"received: y", b"Delivered-To: u@a.test", b"DELIVERED-TO:z", b"Subject: s",
           b"\tReceived: folded", b" Delivered-To: folded", b"", b"X-Received: n"]  # fmt: skip
_lines = st.lists(
    st.one_of(
        st.sampled_from(_FIELDS), st.binary(max_size=20).filter(lambda b: b"\r" not in b and b"\n" not in b)
    ),
    max_size=30,
)


@given(_lines)
def test_hops_matches_a_line_by_line_model(lines: list[bytes]) -> None:
    message = b"\r\n".join(lines) + b"\r\n"
    assert hops(message) == _model(message)
