# SPDX-License-Identifier: MIT
"""Table tests for both parser twins: (input, limits) → events, chasquid style.

Every case runs whole, one byte at a time and at Hypothesis-chosen split points:
chunking must never change meaning.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastmta._events import (
    BDAT_CHUNK,
    DATA_BARE_LF,
    DATA_END,
    DATA_TOO_BIG,
    LINE,
    LINE_TOO_LONG,
)
from tests.fixtures.parser import drive, split_at

L = LINE
TOO_LONG = (LINE_TOO_LONG, None)
BARE = (DATA_BARE_LF, None)
BIG = (DATA_TOO_BIG, None)
CHUNK = (BDAT_CHUNK, None)  # a chunk was read; its octets show in the DATA_END body


def end(body: bytes, long_lines: int = 0) -> list[tuple[object, object]]:
    return [(DATA_END, body), ("long_lines", long_lines)]


def lines(*items: bytes) -> list[tuple[object, object]]:
    return [(L, item) for item in items]


R = {"bare_lf": "reject"}
N = {"bare_lf": "normalise"}

# What a smuggling sender puts after its fake end of data: a command, then the real end.
SMUGGLED = b"MAIL FROM:<x@evil.test>\r\n.\r\nNOOP\r\n"

Case = tuple[str, bytes, dict[str, Any], list[tuple[object, object]]]
CASES: list[Case] = [
    # -- command mode ------------------------------------------------------------
    ("commands", b"EHLO a.test\r\nNOOP\r\nQUIT\r\n", {}, lines(b"EHLO a.test", b"NOOP", b"QUIT")),
    ("empty-line", b"\r\n\r\n", {}, lines(b"", b"")),
    ("partial-line-kept", b"NOOP\r\nQUI", {}, lines(b"NOOP")),
    ("lf-is-not-a-line-end", b"HELO x\nQUIT\r\n", {}, lines(b"HELO x\nQUIT")),
    ("cr-is-not-a-line-end", b"HELO x\rQUIT\r\n", {}, lines(b"HELO x\rQUIT")),
    ("nul-and-8bit-pass", b"MAIL FROM:<\x00\xff>\r\n", {}, lines(b"MAIL FROM:<\x00\xff>")),
    # RFC 5321 §4.5.3.1.4: 512 octets including CRLF → 510 octets of text.
    ("line-at-max", b"N" * 510 + b"\r\nNOOP\r\n", {}, lines(b"N" * 510, b"NOOP")),
    ("line-max-plus-1", b"N" * 511 + b"\r\nNOOP\r\n", {}, [TOO_LONG, *lines(b"NOOP")]),
    ("line-huge-resyncs", b"X" * 100_000 + b"\r\nNOOP\r\n", {}, [TOO_LONG, *lines(b"NOOP")]),
    ("line-huge-cr-runs", b"\r" * 3000 + b"\nNOOP\r\n", {}, [TOO_LONG, *lines(b"NOOP")]),
    ("small-max-line", b"abc\r\nabcd\r\n", {"max_line": 5}, [*lines(b"abc"), TOO_LONG]),
    (
        "two-too-long",
        b"x" * 20 + b"\r\n" + b"y" * 20 + b"\r\nok\r\n",
        {"max_line": 8},
        [TOO_LONG, TOO_LONG, *lines(b"ok")],
    ),
    # -- DATA ------------------------------------------------------------------
    (
        "data-simple",
        b"DATA\r\nhello\r\n.\r\nQUIT\r\n",
        {},
        [*lines(b"DATA"), *end(b"hello\r\n"), *lines(b"QUIT")],
    ),
    ("data-empty", b"DATA\r\n.\r\nQUIT\r\n", {}, [*lines(b"DATA"), *end(b""), *lines(b"QUIT")]),
    ("data-lowercase", b"data\r\nx\r\n.\r\n", {}, [*lines(b"data"), *end(b"x\r\n")]),
    (
        "data-unstuff",
        b"DATA\r\n..\r\n..x\r\n...\r\n.y\r\n.\r\n",
        {},
        [*lines(b"DATA"), *end(b".\r\n.x\r\n..\r\ny\r\n")],
    ),
    ("data-dot-first", b"DATA\r\n.a\r\n.\r\n", {}, [*lines(b"DATA"), *end(b"a\r\n")]),
    ("data-dot-midline-kept", b"DATA\r\na.b\r\n. \r\n.\r\n", {}, [*lines(b"DATA"), *end(b"a.b\r\n \r\n")]),
    ("data-empty-lines", b"DATA\r\n\r\n\r\n.\r\n", {}, [*lines(b"DATA"), *end(b"\r\n\r\n")]),
    ("data-nul-8bit", b"DATA\r\n\x00\xe9\xff\r\n.\r\n", {}, [*lines(b"DATA"), *end(b"\x00\xe9\xff\r\n")]),
    (
        "data-then-pipelined",
        b"DATA\r\na\r\n.\r\nRSET\r\nMAIL FROM:<>\r\n",
        {},
        [*lines(b"DATA"), *end(b"a\r\n"), *lines(b"RSET", b"MAIL FROM:<>")],
    ),
    (
        "data-twice",
        b"DATA\r\na\r\n.\r\nDATA\r\nb\r\n.\r\n",
        {},
        [*lines(b"DATA"), *end(b"a\r\n"), *lines(b"DATA"), *end(b"b\r\n")],
    ),
    ("data-incomplete", b"DATA\r\nabc\r\n.", {}, lines(b"DATA")),
    # size cap counts the unstuffed body (CRLFs included): at max ok, max+1 too big.
    (
        "size-at-max",
        b"DATA\r\n" + b"a" * 8 + b"\r\n.\r\n",
        {"max_size": 10},
        [*lines(b"DATA"), *end(b"a" * 8 + b"\r\n")],
    ),
    (
        "size-max-plus-1",
        b"DATA\r\n" + b"a" * 9 + b"\r\n.\r\nNOOP\r\n",
        {"max_size": 10},
        [*lines(b"DATA"), BIG, *lines(b"NOOP")],
    ),
    (
        "size-counts-unstuffed",
        b"DATA\r\n.." + b"a" * 7 + b"\r\n.\r\n",
        {"max_size": 10},
        [*lines(b"DATA"), *end(b"." + b"a" * 7 + b"\r\n")],
    ),
    ("size-zero", b"DATA\r\n.\r\n", {"max_size": 0}, [*lines(b"DATA"), *end(b"")]),
    ("size-zero-big", b"DATA\r\n\r\n.\r\n", {"max_size": 0}, [*lines(b"DATA"), BIG]),
    (
        "size-big-no-commands",
        b"DATA\r\n" + b"x" * 50 + b"\r\nQUIT\r\n.\r\nNOOP\r\n",
        {"max_size": 10},
        [*lines(b"DATA"), BIG, *lines(b"NOOP")],
    ),
    # RFC 5322 §2.1.1: 998 octets per line, CRLF excluded, after unstuffing.
    (
        "body-line-998",
        b"DATA\r\n" + b"x" * 998 + b"\r\n.\r\n",
        {},
        [*lines(b"DATA"), *end(b"x" * 998 + b"\r\n", 0)],
    ),
    (
        "body-line-999",
        b"DATA\r\n" + b"x" * 999 + b"\r\n.\r\n",
        {},
        [*lines(b"DATA"), *end(b"x" * 999 + b"\r\n", 1)],
    ),
    (
        "body-line-stuffed-998",
        b"DATA\r\n." + b"." * 998 + b"\r\n.\r\n",
        {},
        [*lines(b"DATA"), *end(b"." * 998 + b"\r\n", 0)],
    ),
    (
        "body-lines-some-long",
        b"DATA\r\n" + b"a" * 5 + b"\r\nbb\r\n" + b"c" * 6 + b"\r\n.\r\n",
        {"max_body_line": 4},
        [*lines(b"DATA"), *end(b"a" * 5 + b"\r\nbb\r\n" + b"c" * 6 + b"\r\n", 2)],
    ),
    # -- SMTP smuggling: only CRLF.CRLF ends DATA; reject reports at the real end --
    *(
        (
            f"smuggle-{name}",
            b"DATA\r\na" + before + b"." + after + SMUGGLED,
            R,
            [*lines(b"DATA"), BARE, *lines(b"NOOP")],
        )
        for name, before, after in [
            ("lf-dot-lf", b"\n", b"\n"),
            ("cr-dot-cr", b"\r", b"\r"),
            ("lf-dot-crlf", b"\n", b"\r\n"),
            ("crlf-dot-lf", b"\r\n", b"\n"),
            ("cr-dot-crlf", b"\r", b"\r\n"),
            ("crlf-dot-cr", b"\r\n", b"\r"),
        ]
    ),  # fmt: skip
    ("bare-lf-midbody", b"DATA\r\nab\ncd\r\n.\r\n", R, [*lines(b"DATA"), BARE]),
    ("bare-cr-midbody", b"DATA\r\nab\rcd\r\n.\r\n", R, [*lines(b"DATA"), BARE]),
    ("bare-cr-before-crlf", b"DATA\r\nab\r\r\n.\r\n", R, [*lines(b"DATA"), BARE]),
    ("bare-lf-first", b"DATA\r\n\n.\r\n.\r\n", R, [*lines(b"DATA"), BARE]),
    (
        "bare-wins-over-big",
        b"DATA\r\n" + b"x" * 40 + b"\r\na\nb\r\n.\r\n",
        {**R, "max_size": 10},
        [*lines(b"DATA"), BARE],
    ),
    (
        "bare-after-big",
        b"DATA\r\n" + b"x" * 40 + b"\ny\r\n.\r\n",
        {**R, "max_size": 10},
        [*lines(b"DATA"), BARE],
    ),
    ("nul-is-not-bare", b"DATA\r\n\x00\r\n\x00.\r\n.\r\n", R, [*lines(b"DATA"), *end(b"\x00\r\n\x00.\r\n")]),
    # normalise: bare CR/LF become CRLF in place; they never start a line.
    (
        "norm-lf-dot-lf",
        b"DATA\r\na\n.\nb\r\n.\r\nNOOP\r\n",
        N,
        [*lines(b"DATA"), *end(b"a\r\n.\r\nb\r\n"), *lines(b"NOOP")],
    ),
    ("norm-cr-dot-cr", b"DATA\r\na\r.\rb\r\n.\r\n", N, [*lines(b"DATA"), *end(b"a\r\n.\r\nb\r\n")]),
    ("norm-lf-dot-crlf", b"DATA\r\na\n.\r\nQUIT\r\n.\r\n", N, [*lines(b"DATA"), *end(b"a\r\n.\r\nQUIT\r\n")]),
    ("norm-crlf-dot-lf", b"DATA\r\na\r\n.\nQUIT\r\n.\r\n", N, [*lines(b"DATA"), *end(b"a\r\n\r\nQUIT\r\n")]),
    ("norm-cr-crlf", b"DATA\r\na\r\r\n..b\r\n.\r\n", N, [*lines(b"DATA"), *end(b"a\r\n\r\n.b\r\n")]),
    ("norm-lf-first", b"DATA\r\n\n.\r\n.\r\n", N, [*lines(b"DATA"), *end(b"\r\n.\r\n")]),
    ("norm-dot-cr", b"DATA\r\n.\rx\r\n.\r\n", N, [*lines(b"DATA"), *end(b"\r\nx\r\n")]),
    (
        "norm-counts-size",
        b"DATA\r\n" + b"a\n" * 4 + b"\r\n.\r\n",
        {**N, "max_size": 11},
        [*lines(b"DATA"), BIG],
    ),
    # -- BDAT (RFC 3030): exact octet counts, no unstuffing, LAST ends the body --
    (
        "bdat-last",
        b"BDAT 5 LAST\r\nab.\r\nNOOP\r\n",
        {},
        [*lines(b"BDAT 5 LAST"), CHUNK, *end(b"ab.\r\n"), *lines(b"NOOP")],
    ),
    (
        "bdat-two",
        b"BDAT 3\r\n.\r\nBDAT 4 last\r\n\r\n.\r\n",
        {},
        [
            *lines(b"BDAT 3"),
            CHUNK,
            *lines(b"BDAT 4 last"),
            CHUNK,
            *end(b".\r\n\r\n.\r"),
        ],
    ),
    (
        "bdat-zero-last",
        b"BDAT 2\r\nabBDAT 0 LAST\r\n",
        {},
        [*lines(b"BDAT 2"), CHUNK, *lines(b"BDAT 0 LAST"), CHUNK, *end(b"ab")],
    ),
    (
        "bdat-bare-lf-ok",
        b"BDAT 3 LAST\r\na\nb",
        R,
        [*lines(b"BDAT 3 LAST"), CHUNK, *end(b"a\nb")],
    ),
    (
        "bdat-at-max",
        b"BDAT 4\r\nabcdBDAT 6 LAST\r\nefghij",
        {"max_size": 10},
        [
            *lines(b"BDAT 4"),
            CHUNK,
            *lines(b"BDAT 6 LAST"),
            CHUNK,
            *end(b"abcdefghij"),
        ],
    ),
    (
        "bdat-too-big-across",
        b"BDAT 4\r\nabcdBDAT 7 LAST\r\nefghijkNOOP\r\n",
        {"max_size": 10},
        [
            *lines(b"BDAT 4"),
            CHUNK,
            *lines(b"BDAT 7 LAST"),
            CHUNK,
            BIG,
            *lines(b"NOOP"),
        ],
    ),
    (
        "bdat-too-big-first",
        b"BDAT 11\r\nabcdefghijkBDAT 1 LAST\r\nxNOOP\r\n",
        {"max_size": 10},
        [
            *lines(b"BDAT 11"),
            CHUNK,
            *lines(b"BDAT 1 LAST"),
            CHUNK,
            BIG,
            *lines(b"NOOP"),
        ],
    ),
    (
        "bdat-long-lines",
        b"BDAT 9 LAST\r\nabcde\r\nfg",
        {"max_body_line": 4},
        [*lines(b"BDAT 9 LAST"), CHUNK, *end(b"abcde\r\nfg", 1)],
    ),
    (
        "bdat-long-lines-afresh-after-data",
        b"DATA\r\nabcde\r\n.\r\nBDAT 0 LAST\r\nBDAT 2 LAST\r\nab",
        {"max_body_line": 4},
        [
            *lines(b"DATA"),
            *end(b"abcde\r\n", 1),
            *lines(b"BDAT 0 LAST"),
            CHUNK,
            *end(b""),
            *lines(b"BDAT 2 LAST"),
            CHUNK,
            *end(b"ab"),
        ],
    ),  # fmt: skip
    (
        "bdat-data-lookalike",
        b"BDAT 10 LAST\r\nDATA\r\nQUIT\r\n",
        {},
        [*lines(b"BDAT 10 LAST"), CHUNK, *end(b"DATA\r\nQUIT"), *lines(b"")],
    ),
]


def _ids(case: Case) -> str:
    return case[0]


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_case_whole(parser_impl: ModuleType, case: Case) -> None:
    _, data, limits, expected = case
    assert drive(parser_impl, [data], **limits)[0] == expected


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_case_byte_at_a_time(parser_impl: ModuleType, case: Case) -> None:
    _, data, limits, expected = case
    chunks = [data[i : i + 1] for i in range(len(data))]
    assert drive(parser_impl, chunks, **limits)[0] == expected


@pytest.mark.parametrize("case", CASES, ids=_ids)
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
@given(points=st.lists(st.integers(min_value=0, max_value=200), max_size=8))
def test_case_split(parser_impl: ModuleType, case: Case, points: list[int]) -> None:
    _, data, limits, expected = case
    # Bias the cuts toward the interesting start of the stream, plus some near the end.
    offsets = [p if i % 2 else len(data) - p for i, p in enumerate(points)]
    assert drive(parser_impl, split_at(data, offsets), **limits)[0] == expected
