# SPDX-License-Identifier: MIT
"""The repository explains itself: no pointer to files outside it, no dead links.

Users get this repository and nothing else, so no file may send them to the
design notes kept beside it during development, nor to a tracker's issue
numbers they cannot see. Every relative link in README.md and docs/*.md must
reach a file (and a heading, when it names one) that exists.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ["README.md", "Makefile", "pyproject.toml", "setup.py", ".ci", "docs", "fastmta", "deploy", "bench",
           "tests", "scripts"]  # fmt: skip
SKIP_DIRS = {"__pycache__", ".hypothesis", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
# Patterns are assembled so that this file does not match itself.
OUTSIDE = re.compile("|".join([r"\.\./" + "shared", "DESIGN" + r"\.md", "STYLE" + r"\.md", "DESIGN" + " §"]))
ISSUE = re.compile(r"\b[Ii]ssues? " + r"\d")
# Raw benchmark outputs are records of past runs, kept as they were written.
ISSUE_EXEMPT = ROOT / "bench" / "results"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _text_files() -> Iterator[Path]:
    for name in SCANNED:
        top = ROOT / name
        paths = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in paths:
            if SKIP_DIRS.isdisjoint(path.relative_to(ROOT).parts):
                yield path


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None  # binary: a chart, a fuzz corpus, a compiled module


def test_no_file_points_outside_the_repository() -> None:
    bad = []
    for path in _text_files():
        text = _read(path)
        if text is None:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line) or (ISSUE.search(line) and ISSUE_EXEMPT not in path.parents):
                bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not bad, "say it here instead of pointing elsewhere:\n" + "\n".join(bad)


def _slug(heading: str) -> str:
    """The anchor a Markdown renderer (GitHub's rules) gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", page.read_text(), re.MULTILINE)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    dead = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"^[a-z]+:", target):
            continue  # http:, https:, mailto:
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            dead.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            dead.append(f"{target}: no heading #{anchor}")
    assert not dead, f"{page.relative_to(ROOT)}: " + "; ".join(dead)


def test_the_scan_sees_the_tree() -> None:
    scanned = {p.relative_to(ROOT).as_posix() for p in _text_files()}
    assert {"README.md", "fastmta/config.py", "deploy/fastmta.toml", "scripts/test.sh"} <= scanned
