# SPDX-License-Identifier: MIT
"""fastmta: a mail transfer agent in Python at the speed of the C MTAs."""

from __future__ import annotations

__version__ = "0.1.0"


def __getattr__(name: str) -> str:
    # Lazy, so ``import fastmta`` has no side effects; ``fastmta.parser_backend``
    # says which parser twin is in use ("cython" or "python").
    if name == "parser_backend":
        from fastmta import parser

        return parser.backend
    raise AttributeError(name)
