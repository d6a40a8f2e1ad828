# SPDX-License-Identifier: MIT
"""The only import site of the SMTP parser: the Cython extension, or its pure-Python twin.

FASTMTA_PURE_PYTHON=1 forces the twin. Otherwise the extension is used when it
is built; FASTMTA_REQUIRE_CYTHON=1 makes a missing extension fatal (CI), so a
broken build can never hide behind the slower twin. Type checkers see the API
declared once in `_parser.pyi`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from fastmta import _events as events

if TYPE_CHECKING:
    from fastmta._parser import CommandParser, ReplyParser, encode_data

    backend: str
elif os.environ.get("FASTMTA_PURE_PYTHON") == "1":
    from fastmta._parser_py import CommandParser, ReplyParser, encode_data

    backend = "python"
else:
    try:
        from fastmta._parser import CommandParser, ReplyParser, encode_data

        backend = "cython"
    except ImportError:
        if os.environ.get("FASTMTA_REQUIRE_CYTHON") == "1":
            raise
        from fastmta._parser_py import CommandParser, ReplyParser, encode_data

        backend = "python"

ParserError = events.ParserError

__all__ = ["CommandParser", "ParserError", "ReplyParser", "backend", "encode_data", "events"]
