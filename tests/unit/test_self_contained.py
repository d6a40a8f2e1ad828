# SPDX-License-Identifier: MIT
"""Code, tests, benchmarks and deployment files explain themselves: none points at a
document outside the repository or at an issue tracker number, which a reader of the
repository does not have."""

from __future__ import annotations

import re
import subprocess

from tests.support import ROOT

AREAS = ("fastmta", "tests", "bench", "scripts", "deploy", ".ci", "Makefile", "setup.py", "pyproject.toml")
# Spelt in pieces so that this file does not match itself.
OUTSIDE = re.compile(
    "|".join(
        [r"\.\./" + "shared", "DESIGN" + r"(\.md|\s*§)", "STYLE" + r"(\.md|\s*§)", r"\bissues?" + r" #?\d"]
    ),
    re.IGNORECASE,
)


def test_no_reference_outside_the_repository() -> None:
    files = subprocess.run(["git", "ls-files", "--", *AREAS], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()  # fmt: skip
    assert len(files) > 100
    found = []
    for name in files:
        try:
            text = (ROOT / name).read_text()
        except (UnicodeDecodeError, FileNotFoundError):
            continue  # binary (a chart, a fuzz corpus) or deleted in the work tree
        found += [
            f"{name}:{n}: {line.strip()}"
            for n, line in enumerate(text.splitlines(), 1)
            if OUTSIDE.search(line)
        ]
    assert found == []
