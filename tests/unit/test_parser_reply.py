# SPDX-License-Identifier: MIT
"""ReplyParser (client side) on both twins: multi-line replies, split feeds, bad replies."""

from __future__ import annotations

from types import ModuleType

import pytest

from fastmta._events import MAX_REPLY_LINE, ParserError

EHLO = b"250-mx.example.test Hello\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n250 CHUNKING\r\n"
EHLO_REPLY = (250, [b"mx.example.test Hello", b"PIPELINING", b"SIZE 52428800", b"CHUNKING"])


def test_single_and_multi_line(parser_impl: ModuleType) -> None:
    parser = parser_impl.ReplyParser()
    assert parser.feed(b"220 mx.test ESMTP\r\n" + EHLO) == [(220, [b"mx.test ESMTP"]), EHLO_REPLY]


def test_pipelined_replies_in_one_feed(parser_impl: ModuleType) -> None:
    parser = parser_impl.ReplyParser()
    data = b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 no such user\r\n354 go ahead\r\n"
    assert [code for code, _ in parser.feed(data)] == [250, 250, 550, 354]


def test_split_at_every_offset(parser_impl: ModuleType) -> None:
    data = b"220 hi\r\n" + EHLO + b"221 bye\r\n"
    for i in range(len(data) + 1):
        parser = parser_impl.ReplyParser()
        got = parser.feed(data[:i]) + parser.feed(data[i:])
        assert got == [(220, [b"hi"]), EHLO_REPLY, (221, [b"bye"])], i


def test_one_byte_at_a_time(parser_impl: ModuleType) -> None:
    parser = parser_impl.ReplyParser()
    got = []
    for i in range(len(EHLO)):
        got += parser.feed(EHLO[i : i + 1])
    assert got == [EHLO_REPLY]


def test_bare_code_lf_only_and_buffer_types(parser_impl: ModuleType) -> None:
    parser = parser_impl.ReplyParser()
    assert parser.feed(memoryview(b"250\r\n354 x\n")) == [(250, [b""]), (354, [b"x"])]
    assert parser.feed(bytearray(b"221 2.0.0 bye\r\n")) == [(221, [b"2.0.0 bye"])]


def test_partial_reply_waits(parser_impl: ModuleType) -> None:
    parser = parser_impl.ReplyParser()
    assert parser.feed(b"250-a\r\n250-b\r\n") == []
    assert parser.feed(b"250 c\r\n") == [(250, [b"a", b"b", b"c"])]


@pytest.mark.parametrize(
    "bad",
    [
        b"25\r\n",
        b"abc def\r\n",
        b"2500 x\r\n",
        b"250x\r\n",
        b"650 six hundred\r\n",
        b"050 zero\r\n",
        b"\r\n",
        b"250-a\r\n251 b\r\n",
        b"25a ok\r\n",
    ],
)
def test_malformed_raises_and_stays_broken(parser_impl: ModuleType, bad: bytes) -> None:
    parser = parser_impl.ReplyParser()
    with pytest.raises(ParserError):
        parser.feed(bad)
    with pytest.raises(ParserError):
        parser.feed(b"250 ok\r\n")


def test_endless_line_is_an_error(parser_impl: ModuleType) -> None:
    parser = parser_impl.ReplyParser()
    with pytest.raises(ParserError):
        parser.feed(b"250 " + b"x" * (MAX_REPLY_LINE + 10))


def test_endless_continuation_is_an_error(parser_impl: ModuleType) -> None:
    parser = parser_impl.ReplyParser()
    with pytest.raises(ParserError):
        parser.feed(b"250-x\r\n" * 2000)


def test_long_line_one_octet_at_a_time(parser_impl: ModuleType) -> None:
    parser = parser_impl.ReplyParser()
    text = b"x" * 20000
    for octet in b"250 " + text + b"\r":
        assert parser.feed(bytes([octet])) == []
    assert parser.feed(b"\n") == [(250, [text])]


def test_held_pieces_count_toward_the_line_limit(parser_impl: ModuleType) -> None:
    parser = parser_impl.ReplyParser()
    piece = b"x" * 4096
    with pytest.raises(ParserError):
        for _ in range(MAX_REPLY_LINE // len(piece) + 2):
            parser.feed(piece)
