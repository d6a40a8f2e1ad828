# SPDX-License-Identifier: MIT
"""The only import site of the protocol core: the Cython extension, or its pure-Python twin.

The core always pairs with the parser of the same kind, so the parser's choice
(``fastmta/parser.py``: FASTMTA_PURE_PYTHON, FASTMTA_REQUIRE_CYTHON) decides here too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastmta import parser

backend = parser.backend
if TYPE_CHECKING or backend == "cython":
    from fastmta.smtp._core import Core
else:
    from fastmta.smtp._core_py import Core

__all__ = ["Core", "backend"]
