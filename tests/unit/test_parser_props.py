# SPDX-License-Identifier: MIT
"""Property tests: the Cython and pure twins agree, chunking never changes meaning,
encode_data and DATA parsing are inverses, and the terminator is found at any split.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fastmta._events import BDAT_CHUNK, DATA_BARE_LF, DATA_END, DATA_TOO_BIG, LINE
from tests.fixtures.parser import drive, split_at

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Tokens that sit on every boundary the parser cares about.
TOKENS = [
    b"\r\n",
    b"\r",
    b"\n",
    b".",
    b"..",
    b"\r\n.\r\n",
    b"\r\n.",
    b".\r\n",
    b"\n.\n",
    b"\r.\r",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\r.\r\n",
    b"a",
    b"abc",
    b"\x00",
    b"\xff\xe9",
    b" ",
    b"DATA\r\n",
    b"data\r\n",
    b" DATA\r\n",
    b"BDAT 3\r\n",
    b"BDAT 0 LAST\r\n",
    b"BDAT 7 LAST\r\n",
    b"STARTTLS\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"MAIL FROM:<a@b.test>\r\n",
]
RUNS = st.builds(
    lambda c, k: c * k, st.sampled_from([b"x", b".", b"\r", b"\n", b"\r\n"]), st.integers(0, 1100)
)
PIECES = st.one_of(st.sampled_from(TOKENS), st.binary(max_size=24), RUNS)
STREAMS = st.lists(PIECES, max_size=50).map(b"".join)
LIMITS = st.fixed_dictionaries(
    {
        "max_line": st.sampled_from([3, 5, 16, 512]),
        "max_size": st.sampled_from([0, 1, 10, 100, 5000, 50 * 1024 * 1024]),
        "bare_lf": st.sampled_from(["reject", "normalise"]),
        "max_body_line": st.sampled_from([1, 4, 80, 998]),
    }
)
POINTS = st.lists(st.integers(min_value=0, max_value=20_000), max_size=12)


def _run(
    mod: ModuleType, chunks: list[bytes], limits: Mapping[str, Any], marks: bool = False
) -> tuple[object, ...]:
    # long_lines is only defined at DATA_END (drive records it there).
    out, parser = drive(mod, chunks, marks, **limits)
    return out, parser.pending


@SETTINGS
@given(data=STREAMS, limits=LIMITS, points=POINTS)
def test_twins_identical(
    twins: tuple[ModuleType, ModuleType], data: bytes, limits: dict[str, Any], points: list[int]
) -> None:
    cython, python = twins
    chunks = split_at(data, points)
    # Feed by feed: the twins must agree on when each event comes, not only on the list.
    assert _run(cython, chunks, limits, marks=True) == _run(python, chunks, limits, marks=True)


@SETTINGS
@given(data=STREAMS, limits=LIMITS, points=POINTS)
def test_chunking_invariant(
    parser_impl: ModuleType, data: bytes, limits: dict[str, Any], points: list[int]
) -> None:
    # STARTTLS discards what is buffered, so there the chunking is meaningful.
    assume(b"STARTTLS" not in data.upper())
    whole = _run(parser_impl, [data], limits)
    assert _run(parser_impl, split_at(data, points), limits) == whole


def test_one_byte_at_a_time_matches_whole(parser_impl: ModuleType) -> None:
    plain = [t for t in TOKENS if t != b"STARTTLS\r\n"]
    data = b"".join(plain) * 3 + b"\r\n.\r\n" + b"".join(reversed(plain))
    for bare_lf in ("reject", "normalise"):
        limits = {"max_line": 16, "max_size": 300, "bare_lf": bare_lf, "max_body_line": 4}
        whole = _run(parser_impl, [data], limits)
        assert _run(parser_impl, [data[i : i + 1] for i in range(len(data))], limits) == whole


# A BDAT dialogue: chunks (octets of any kind, the last with LAST), RSETs between them.
CHUNK_DATA = st.lists(PIECES, max_size=6).map(b"".join)
BDAT_STEPS = st.lists(st.one_of(CHUNK_DATA, st.just(None)), max_size=6).flatmap(
    lambda steps: CHUNK_DATA.map(lambda last: [*steps, last])
)


def _bdat_dialogue(steps: list[bytes | None], limit: int, max_body_line: int) -> tuple[bytes, list[object]]:
    """The wire form of `steps` (None is an RSET) and the events it must give, worked
    out from the chunks alone: the body is what the chunks since the last RSET hold."""
    wire = bytearray()
    expected: list[object] = []
    body = b""
    for i, step in enumerate(steps):
        if step is None:
            wire += b"RSET\r\n"
            expected.append((LINE, b"RSET"))
            body = b""
            continue
        line = b"BDAT %d%s" % (len(step), b" LAST" if i == len(steps) - 1 else b"")
        wire += line + b"\r\n" + step
        expected += [(LINE, line), (BDAT_CHUNK, None)]
        body += step
    if len(body) > limit:
        expected.append((DATA_TOO_BIG, None))
    else:
        long_lines = sum(len(line) > max_body_line for line in body.split(b"\r\n")) if body else 0
        expected += [(DATA_END, body), ("long_lines", long_lines)]
    expected.append((LINE, b"NOOP"))
    return bytes(wire + b"NOOP\r\n"), expected


@SETTINGS
@given(
    steps=BDAT_STEPS,
    slack=st.one_of(st.none(), st.integers(-2, 2)),
    max_body_line=st.sampled_from([1, 4, 80, 998]),
    points=st.lists(st.integers(min_value=0, max_value=8000), max_size=16),
)
def test_bdat_chunks_build_the_body(
    twins: tuple[ModuleType, ModuleType],
    steps: list[bytes | None],
    slack: int | None,
    max_body_line: int,
    points: list[int],
) -> None:
    """Random chunk sizes (0 included) cut at random reads, RSET between chunks, a
    max_size below, at and above the body or none: both twins give the same events,
    feed by feed, and the body is the chunks' octets joined."""
    cython, python = twins
    last_rset = max((i for i, step in enumerate(steps) if step is None), default=-1)
    size = sum(len(step) for step in steps[last_rset + 1 :] if step is not None)
    limits = {"max_size": 50 << 20 if slack is None else max(0, size + slack), "max_body_line": max_body_line}
    wire, expected = _bdat_dialogue(steps, limits["max_size"], max_body_line)
    chunks = split_at(wire, points)
    assert _run(cython, chunks, limits, marks=True) == _run(python, chunks, limits, marks=True)
    assert drive(python, chunks, **limits)[0] == expected


BODIES = st.lists(
    st.one_of(
        st.sampled_from([b"\r\n", b".", b"..", b"\r\n.", b"\r", b"\n", b"x" * 80, b"\x00\xff"]), st.binary()
    ),
    max_size=40,
).map(b"".join)


def _normalised(body: bytes) -> bytes:
    body = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    return body + b"\r\n" if body and not body.endswith(b"\r\n") else body


@SETTINGS
@given(body=BODIES, points=POINTS)
def test_unstuff_of_stuff_is_identity(parser_impl: ModuleType, body: bytes, points: list[int]) -> None:
    wire = parser_impl.encode_data(body)
    assert wire.endswith(b"\r\n.\r\n") or wire == b".\r\n"
    parser = parser_impl.CommandParser(bare_lf="reject")
    parser.start_data()
    events = []
    for chunk in split_at(wire + b"NOOP\r\n", points):
        events += parser.feed(chunk)
    assert events == [(DATA_END, _normalised(body)), (LINE, b"NOOP")]


@SETTINGS
@given(body=BODIES)
def test_encode_twins_identical(twins: tuple[ModuleType, ModuleType], body: bytes) -> None:
    cython, python = twins
    assert cython.encode_data(body) == python.encode_data(body)
    assert cython.encode_data(bytearray(body)) == python.encode_data(memoryview(body))


BODY = b"Subject: t\r\n\r\n..leading dot\r\n.\r\n..\r\nmid.dot\r\n" + b"y" * 999 + b"\r\nlast\r\n"
WIRE = b"DATA\r\n" + BODY.replace(b"\r\n.", b"\r\n..") + b".\r\nQUIT\r\n"
EXPECTED_BODY = BODY


@pytest.mark.parametrize("bare_lf", ["reject", "normalise"])
def test_terminator_split_at_every_offset(parser_impl: ModuleType, bare_lf: str) -> None:
    expected = [(LINE, b"DATA"), (DATA_END, EXPECTED_BODY), ("long_lines", 1), (LINE, b"QUIT")]
    for i in range(1, len(WIRE)):
        assert drive(parser_impl, [WIRE[:i], WIRE[i:]], bare_lf=bare_lf)[0] == expected, i


def test_terminator_in_three_pieces(parser_impl: ModuleType) -> None:
    term = len(WIRE) - len(b"\r\n.\r\nQUIT\r\n")
    expected = [(LINE, b"DATA"), (DATA_END, EXPECTED_BODY), ("long_lines", 1), (LINE, b"QUIT")]
    for i in range(term - 3, term + 8):
        for j in range(i + 1, term + 9):
            assert drive(parser_impl, [WIRE[:i], WIRE[i:j], WIRE[j:]])[0] == expected, (i, j)


# SMTP smuggling (SEC Consult, Dec 2023): each receiver took one false end of data.
SMUGGLING = {
    "cve-2023-51764-postfix-lf-dot-crlf": b"\n.\r\n",
    "cve-2023-51765-sendmail-lf-dot-crlf": b"\n.\r\n",
    "cve-2023-51766-exim-lf-dot-lf": b"\n.\n",
    "lf-dot-lf": b"\n.\n",
    "cr-dot-cr": b"\r.\r",
    "crlf-dot-lf": b"\r\n.\n",
    "cr-dot-crlf": b"\r.\r\n",
    "crlf-dot-cr": b"\r\n.\r",
    "lf-lf": b"\n\n",
    "cr-cr": b"\r\r",
}


@pytest.mark.parametrize("false_end", list(SMUGGLING.values()), ids=list(SMUGGLING))
def test_smuggled_command_never_becomes_a_command(parser_impl: ModuleType, false_end: bytes) -> None:
    """Every split of a smuggling attempt: one DATA_BARE_LF at the real end, nothing else."""
    wire = b"DATA\r\nhello" + false_end + b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<v@y.test>\r\n.\r\nNOOP\r\n"
    expected = [(LINE, b"DATA"), (DATA_BARE_LF, None), (LINE, b"NOOP")]
    for i in range(1, len(wire)):
        assert drive(parser_impl, [wire[:i], wire[i:]])[0] == expected, i
