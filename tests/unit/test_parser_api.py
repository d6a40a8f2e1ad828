# SPDX-License-Identifier: MIT
"""Parser API contract on both twins: barrier, pending, discard, BDAT, limits, import site."""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from fastmta._events import BDAT_CHUNK, DATA_END, DATA_TOO_BIG, LINE, LINE_TOO_LONG


def test_barrier_stops_after_data_and_keeps_the_rest(parser_impl: ModuleType) -> None:
    parser = parser_impl.CommandParser()
    assert parser.feed(b"RCPT TO:<a@b.test>\r\nDATA\r\nSubject: x\r\n") == [
        (LINE, b"RCPT TO:<a@b.test>"),
        (LINE, b"DATA"),
    ]
    assert parser.pending
    # Refused DATA (e.g. 503): the session just continues in command mode.
    assert parser.feed(b"") == [(LINE, b"Subject: x")]
    assert not parser.pending


def test_barrier_without_buffered_bytes_is_not_pending(parser_impl: ModuleType) -> None:
    parser = parser_impl.CommandParser()
    assert parser.feed(b"DATA\r\n") == [(LINE, b"DATA")]
    assert not parser.pending
    assert parser.feed(b"NOOP\r\n") == [(LINE, b"NOOP")]


def test_partial_line_is_not_pending(parser_impl: ModuleType) -> None:
    parser = parser_impl.CommandParser()
    assert parser.feed(b"NOOP\r\nMAIL FR") == [(LINE, b"NOOP")]
    assert not parser.pending
    assert parser.feed(b"OM:<>\r\n") == [(LINE, b"MAIL FROM:<>")]


@pytest.mark.parametrize("line", [b"STARTTLS", b"starttls", b"  StartTLS", b"BDAT 1", b"data", b"\tDATA x"])
def test_barrier_verbs(parser_impl: ModuleType, line: bytes) -> None:
    parser = parser_impl.CommandParser()
    assert parser.feed(line + b"\r\nNOOP\r\n") == [(LINE, line)]
    assert parser.pending


def test_starttls_discard_drops_injected_commands(parser_impl: ModuleType) -> None:
    parser = parser_impl.CommandParser()
    assert parser.feed(b"STARTTLS\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<a@b.test>\r\n") == [
        (LINE, b"STARTTLS")
    ]
    parser.discard()
    assert not parser.pending
    assert parser.feed(b"") == []
    assert parser.feed(b"EHLO after.tls\r\n") == [(LINE, b"EHLO after.tls")]


def test_data_pipelined_before_354(parser_impl: ModuleType) -> None:
    parser = parser_impl.CommandParser()
    events = parser.feed(b"DATA\r\nbody\r\n.\r\nQUIT\r\n")
    assert events == [(LINE, b"DATA")] and parser.pending
    parser.start_data()
    assert parser.feed(b"") == [(DATA_END, b"body\r\n"), (LINE, b"QUIT")]


def test_buffer_types(parser_impl: ModuleType) -> None:
    parser = parser_impl.CommandParser()
    assert parser.feed(memoryview(b"NOOP\r\nDA")) == [(LINE, b"NOOP")]
    assert parser.feed(bytearray(b"TA\r\n")) == [(LINE, b"DATA")]
    parser.start_data()
    assert parser.feed(memoryview(b"x\r\n.\r\n")) == [(DATA_END, b"x\r\n")]
    assert all(type(p) is bytes for _, p in parser.feed(bytearray(b"A\r\nB\r\n")))


def test_huge_line_is_dropped_not_buffered(parser_impl: ModuleType) -> None:
    parser = parser_impl.CommandParser()
    block = b"A" * (1 << 20)
    assert parser.feed(block) == [(LINE_TOO_LONG, None)]  # reported once, when the limit is crossed
    for _ in range(15):
        assert parser.feed(block) == []
        assert parser.partial
    assert parser.feed(b"\r\nNOOP\r\n") == [(LINE, b"NOOP")]


def test_over_long_line_is_reported_when_the_limit_is_crossed(parser_impl: ModuleType) -> None:
    """A client that never sends the CRLF still hears 500 (slowloris): at max_line octets
    without a CRLF, not at the CRLF. The rest of the line is still never a command."""
    parser = parser_impl.CommandParser(max_line=8)
    assert parser.feed(b"x" * 7) == []  # 7 octets: not yet known to be over (see the edges below)
    assert parser.partial
    assert parser.feed(b"x") == [(LINE_TOO_LONG, None)]
    assert parser.feed(b"NOOP\r") == []
    assert parser.feed(b"\nNOOP\r\n") == [(LINE, b"NOOP")]
    assert not parser.partial


@pytest.mark.parametrize(
    ("chunks", "events"),
    [
        ([b"x" * 6 + b"\r", b"\n"], [[], [(LINE, b"x" * 6)]]),  # 8 octets with the CRLF: at the limit
        ([b"x" * 7 + b"\r", b"\n"], [[(LINE_TOO_LONG, None)], []]),  # 9: past it, known at 8 octets
        ([b"x" * 7, b"\r\n"], [[], [(LINE_TOO_LONG, None)]]),  # 9, known only at the CRLF
    ],
)
def test_line_limit_edges_feed_by_feed(
    parser_impl: ModuleType, chunks: list[bytes], events: list[list[tuple[int, object]]]
) -> None:
    parser = parser_impl.CommandParser(max_line=8)
    assert [parser.feed(c) for c in chunks] == events
    assert not parser.partial


def test_partial_says_whether_a_command_line_is_unfinished(parser_impl: ModuleType) -> None:
    parser = parser_impl.CommandParser()
    assert not parser.partial
    assert parser.feed(b"NOOP\r\nMAIL FR") == [(LINE, b"NOOP")]
    assert parser.partial
    assert parser.feed(b"OM:<>\r\n") == [(LINE, b"MAIL FROM:<>")]
    assert not parser.partial
    assert parser.feed(b"DATA\r\nbody") == [(LINE, b"DATA")]
    assert not parser.partial  # stopped at the barrier: the rest is unparsed, not a line
    parser.start_data()
    assert parser.feed(b"") == []
    assert not parser.partial  # message data is no command line


def test_huge_body_past_max_size_is_not_kept(parser_impl: ModuleType) -> None:
    parser = parser_impl.CommandParser(max_size=1000)
    parser.start_data()
    line = b"x" * 98 + b"\r\n"
    for _ in range(200):
        assert parser.feed(line * 50) == []
    assert parser.body_size > 1000
    assert parser.feed(b".\r\n") == [(DATA_TOO_BIG, None)]


def test_data_body_in_many_feeds(parser_impl: ModuleType) -> None:
    body = b"".join(b"line %d\r\n" % i + (b"..dot\r\n" if i % 50 == 0 else b"") for i in range(20000))
    parser = parser_impl.CommandParser()
    parser.start_data()
    events = []
    for i in range(0, len(body), 65536):
        events += parser.feed(body[i : i + 65536])
    events += parser.feed(b".\r\n")
    assert events == [(DATA_END, body.replace(b"\r\n..", b"\r\n.").replace(b"..dot", b".dot"))]


def test_bdat_body_size_and_reset(parser_impl: ModuleType) -> None:
    parser = parser_impl.CommandParser(max_size=10)
    parser.start_bdat(4, False)
    assert parser.feed(b"abcd") == [(BDAT_CHUNK, None)]
    assert parser.body_size == 4
    parser.reset_body()
    assert parser.body_size == 0
    parser.start_bdat(3, True)
    assert parser.feed(b"xyzNOOP\r\n") == [(BDAT_CHUNK, None), (DATA_END, b"xyz"), (LINE, b"NOOP")]


def test_bdat_big_chunk_in_pieces(parser_impl: ModuleType) -> None:
    parser = parser_impl.CommandParser()
    data = bytes(range(256)) * 4096
    parser.start_bdat(len(data), True)
    events = []
    for i in range(0, len(data), 100_000):
        events += parser.feed(data[i : i + 100_000])
    assert events == [(BDAT_CHUNK, None), (DATA_END, data)]


def test_chunked_bdat_body_is_held_once(twins: tuple[ModuleType, ModuleType]) -> None:
    """The compiled twin copies every chunk straight into the one body buffer, so a
    1 MiB body sent as 16 pipelined chunks takes about 1 MiB while it is parsed, not
    the chunks kept plus their join (2 MiB). The pure twin joins its pieces once at
    the end, as it does for DATA, and is not measured."""
    body = bytes(range(256)) * 4096
    step = 64 << 10
    reads = [
        b"BDAT %d%s\r\n" % (step, b" LAST" if i + step >= len(body) else b"") + body[i : i + step]
        for i in range(0, len(body), step)
    ]
    parser = twins[0].CommandParser()

    def parse() -> list[Any]:
        for read in reads:
            words = parser.feed(read)[-1][1].split()
            parser.start_bdat(int(words[1]), len(words) == 3)
            events = parser.feed(b"")
        return events

    events, peak = _with_peak(parse)
    assert peak < 1.25 * len(body), peak
    assert events == [(BDAT_CHUNK, None), (DATA_END, body)]


def _with_peak(parse: Callable[[], list[Any]]) -> tuple[list[Any], int]:
    """``parse()``'s events and the most memory Python held while it ran."""
    tracemalloc.start()
    try:
        events = parse()
        return events, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_chunk_in_the_read_of_its_bdat_line_is_copied_once(parser_impl: ModuleType) -> None:
    """Client writes put the chunk right behind its BDAT line. The parser stops at the
    line and resumes on feed(b""): it keeps the read itself, not a copy of its rest."""
    body = bytes(range(256)) * 4096
    read = b"BDAT %d LAST\r\n" % len(body) + body
    parser = parser_impl.CommandParser()

    def parse() -> list[Any]:
        assert parser.feed(read) == [(LINE, b"BDAT %d LAST" % len(body))]
        parser.start_bdat(len(body), True)
        return list(parser.feed(b""))

    events, peak = _with_peak(parse)
    assert peak < 1.25 * len(body), peak
    assert events == [(BDAT_CHUNK, None), (DATA_END, body)]


def test_zero_size_bdat_needs_an_empty_feed(parser_impl: ModuleType) -> None:
    parser = parser_impl.CommandParser()
    parser.start_bdat(0, True)
    assert parser.feed(b"") == [(BDAT_CHUNK, None), (DATA_END, b"")]


@pytest.mark.parametrize(
    "kwargs",
    [{"max_line": 2}, {"max_size": -1}, {"bare_lf": "accept"}, {"max_body_line": 0}],
)
def test_bad_limits_raise_value_error(parser_impl: ModuleType, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        parser_impl.CommandParser(**kwargs)


def test_negative_bdat_size_raises(parser_impl: ModuleType) -> None:
    with pytest.raises(ValueError):
        parser_impl.CommandParser().start_bdat(-1, True)


def test_encode_data_examples(parser_impl: ModuleType) -> None:
    enc = parser_impl.encode_data
    assert enc(b"") == b".\r\n"
    assert enc(b"a") == b"a\r\n.\r\n"
    assert enc(b".\r\n") == b"..\r\n.\r\n"
    assert enc(b"a\r\n.b\r\n..\r\n") == b"a\r\n..b\r\n...\r\n.\r\n"
    assert enc(b"a\nb\rc\r\n.") == b"a\r\nb\r\nc\r\n..\r\n.\r\n"
    assert enc(b"\n.\n") == b"\r\n..\r\n.\r\n"


def _backend(env: dict[str, str]) -> str:
    code = "import fastmta, fastmta.parser as p; print(fastmta.parser_backend, p.CommandParser.__module__)"
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_import_site_picks_the_backend() -> None:
    assert _backend({"FASTMTA_PURE_PYTHON": "1"}) == "python fastmta._parser_py"
    assert _backend({"FASTMTA_PURE_PYTHON": "0", "FASTMTA_REQUIRE_CYTHON": "1"}) == "cython fastmta._parser"


def test_discard_mid_data_returns_to_command_mode(parser_impl: ModuleType) -> None:
    parser = parser_impl.CommandParser()
    parser.start_data()
    assert parser.feed(b"half a body\r\n.") == []
    parser.discard()
    assert parser.feed(b"NOOP\r\n") == [(LINE, b"NOOP")]


def test_normalised_smuggling_is_stored_harmlessly(parser_impl: ModuleType) -> None:
    """With "normalise" a false end is kept as body text, and re-encoding stuffs it."""
    parser = parser_impl.CommandParser(bare_lf="normalise")
    parser.start_data()
    events = parser.feed(b"a\n.\r\nMAIL FROM:<e@x.test>\r\n.\r\nNOOP\r\n")
    assert events == [(DATA_END, b"a\r\n.\r\nMAIL FROM:<e@x.test>\r\n"), (LINE, b"NOOP")]
    assert parser_impl.encode_data(events[0][1]) == b"a\r\n..\r\nMAIL FROM:<e@x.test>\r\n.\r\n"


def test_caller_buffers_are_not_kept(parser_impl: ModuleType) -> None:
    parser = parser_impl.CommandParser()
    parser.start_data()
    buf = bytearray(b"Subject: x\r\n\r\nbody\r\n.")
    assert parser.feed(buf) == []
    buf[:] = b"X" * len(buf)  # the caller reuses its read buffer
    assert parser.feed(memoryview(bytearray(b"\r\nQUIT\r\n"))) == [
        (DATA_END, b"Subject: x\r\n\r\nbody\r\n"),
        (LINE, b"QUIT"),
    ]
