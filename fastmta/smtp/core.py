# SPDX-License-Identifier: MIT
"""The only import site of the protocol core: the Cython extension, or its pure-Python twin.

The same switch as the parser's (``fastmta/parser.py``): FASTMTA_PURE_PYTHON=1
forces the twin, FASTMTA_REQUIRE_CYTHON=1 makes a missing extension fatal.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastmta.smtp._core import Core

    backend: str
elif os.environ.get("FASTMTA_PURE_PYTHON") == "1":
    from fastmta.smtp._core_py import Core

    backend = "python"
else:
    try:
        from fastmta.smtp._core import Core

        backend = "cython"
    except ImportError:
        if os.environ.get("FASTMTA_REQUIRE_CYTHON") == "1":
            raise
        from fastmta.smtp._core_py import Core

        backend = "python"

__all__ = ["Core", "backend"]
