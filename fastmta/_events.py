# SPDX-License-Identifier: MIT
"""Leaf module shared by both parser twins: event kinds, the parser error, limits.

It imports nothing from fastmta, so `_parser.pyx` and `_parser_py.py` can both
depend on it without a cycle. Event kinds are small ints so a session can
dispatch on them with a dict or an if-chain at C speed.
"""

from __future__ import annotations

# Events from CommandParser.feed(): (kind, payload).
LINE = 1  # payload: the command line without its CRLF (bytes)
LINE_TOO_LONG = 2  # payload: None; sent once the line passes max_line, the rest dropped up to its CRLF
DATA_END = 3  # payload: the whole body (bytes, dot-unstuffed, ends in CRLF or is empty)
DATA_TOO_BIG = 4  # payload: None; body passed max_size, reported at the real end
DATA_BARE_LF = 5  # payload: None; bare CR or LF seen with bare_lf="reject"
BDAT_CHUNK = 6  # payload: None; a chunk was read whole (its octets are kept for DATA_END)

# Bare CR / bare LF policy in DATA (SMTP smuggling defence).
BARE_LF_REJECT = "reject"
BARE_LF_NORMALISE = "normalise"
BARE_LF_POLICIES = (BARE_LF_REJECT, BARE_LF_NORMALISE)

# RFC 5321 §4.5.3.1.4: a command line is at most 512 octets INCLUDING the CRLF.
DEFAULT_MAX_LINE = 512
DEFAULT_MAX_SIZE = 50 * 1024 * 1024
# RFC 5322 §2.1.1: at most 998 characters per line, EXCLUDING the CRLF.
DEFAULT_MAX_BODY_LINE = 998
# Client side: longest reply line we buffer and most lines in one reply.
MAX_REPLY_LINE = 65536
MAX_REPLY_LINES = 1000


class ParserError(ValueError):
    """Malformed input the parser cannot recover from (only ReplyParser raises it)."""


def check_limits(max_line: int, max_size: int, bare_lf: str, max_body_line: int) -> None:
    """Validate CommandParser arguments once, the same way for both twins."""
    if max_line < 3:
        raise ValueError(f"max_line must be at least 3 (it counts the CRLF), got {max_line}")
    if max_size < 0:
        raise ValueError(f"max_size must be >= 0, got {max_size}")
    if bare_lf not in BARE_LF_POLICIES:
        raise ValueError(f"bare_lf must be one of {BARE_LF_POLICIES}, got {bare_lf!r}")
    if max_body_line < 1:
        raise ValueError(f"max_body_line must be >= 1, got {max_body_line}")
