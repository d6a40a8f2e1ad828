# SPDX-License-Identifier: MIT
"""docs/architecture.md keeps in step with the tree: one table row per module file.

The module table is where a newcomer looks first, so a module added, moved or
removed without its row fails here, and so does any ``*.py`` path the page names
that no longer exists (the data-flow diagram and the "Where to find" list name
paths relative to ``fastmta/``).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "fastmta"
PAGE = ROOT / "docs" / "architecture.md"
SOURCE_SUFFIXES = {".py", ".pyx", ".pyi", ".pxd"}
ROW = re.compile(r"^\| `(fastmta/[^`]+)` \|", re.MULTILINE)
# A path-like word ending in a module suffix; not the tail of a template such as ``<name>.py``.
PATH = re.compile(r"(?<![\w/<>.-])([\w/]+\.(?:pyx|pyi|pxd|py))\b")


def _module_files() -> set[str]:
    return {
        p.relative_to(ROOT).as_posix()
        for p in PKG.rglob("*")
        if p.suffix in SOURCE_SUFFIXES and "__pycache__" not in p.parts
    }


def _module_section(text: str) -> str:
    start = text.index("\n## Modules\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_the_table_lists_every_module_once() -> None:
    rows = ROW.findall(_module_section(PAGE.read_text()))
    files = _module_files()
    missing = sorted(files - set(rows))
    stale = sorted(set(rows) - files)
    twice = sorted(name for name, n in Counter(rows).items() if n > 1)
    assert not (missing or stale or twice), (
        f"docs/architecture.md, Modules: missing {missing}; no such file {stale}; listed twice {twice}"
    )


def test_every_path_the_page_names_exists() -> None:
    dead = []
    for name in sorted(set(PATH.findall(PAGE.read_text()))):
        candidates = [ROOT / name] if name.startswith(("fastmta/", "tests/", "bench/")) else [PKG / name]
        if not any(c.is_file() for c in candidates):
            dead.append(name)
    assert not dead, f"docs/architecture.md names files that do not exist: {dead}"


def test_the_check_sees_the_tree() -> None:
    files = _module_files()
    assert {"fastmta/_parser.pyx", "fastmta/node/server.py", "fastmta/dkim/signer.py"} <= files
    assert not any("__pycache__" in f for f in files)
