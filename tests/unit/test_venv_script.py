# SPDX-License-Identifier: MIT
"""scripts/venv.sh installs only when something the install depends on changed.

``serve.sh`` and ``test.sh`` both call it; a reinstall costs about 10 s (and a Cython
build when the parser changed), so an unchanged checkout must skip it, while a new
dependency, extras not installed yet, a debug build or an edited ``_parser.pyx`` must
reinstall.
The script runs for real in a copy of the files it reads; its interpreter is a small
stand-in that records each pip call and leaves what an editable install leaves (the
``.pth`` file and a compiled parser), because a real install per case would take minutes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.support import ROOT

FAKE_PYTHON = """#!/bin/sh
echo "$*" >>"$(dirname "$0")/../pip.log"
case "$*" in *" -e "*)
  mkdir -p .venv/lib/python3/site-packages
  : >.venv/lib/python3/site-packages/__editable__.fastmta-0.pth
  : >fastmta/_parser.test.so ;;
esac
"""


def _checkout(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    for rel in ("scripts/venv.sh", "pyproject.toml", "setup.py", "fastmta/_parser.pyx"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, root / rel)
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return root


def _installs(root: Path, **env: str) -> int:
    """Run venv.sh; how many pip installs it made."""
    log = root / ".venv" / "pip.log"
    log.unlink(missing_ok=True)
    subprocess.run(["sh", "scripts/venv.sh"], cwd=root, check=True, timeout=30,
                   env={**os.environ, "FASTMTA_EXTRAS": "test", "FASTMTA_DEBUG": "", **env})  # fmt: skip
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_unchanged_checkout_skips_the_install(tmp_path: Path) -> None:
    root = _checkout(tmp_path)
    assert _installs(root) == 2  # pip, setuptools, Cython; then fastmta itself
    assert _installs(root) == 0
    assert _installs(root, FASTMTA_EXTRAS="") == 0  # serve.sh: the runtime is installed already
    assert _installs(root, FASTMTA_EXTRAS="test,bench") == 2
    assert _installs(root, FASTMTA_EXTRAS="bench") == 0
    assert _installs(root, FASTMTA_EXTRAS="test,bench", FASTMTA_DEBUG="1") == 2


def test_changed_dependencies_or_parser_reinstall(tmp_path: Path) -> None:
    root = _checkout(tmp_path)
    assert _installs(root) == 2
    with (root / "pyproject.toml").open("a") as f:
        f.write("\n# a new dependency\n")
    assert _installs(root) == 2
    pyx = root / "fastmta" / "_parser.pyx"
    so = root / "fastmta" / "_parser.test.so"
    built = so.stat().st_mtime
    os.utime(so, (built - 10, built - 10))
    os.utime(pyx)  # edited after the last build
    assert _installs(root) == 2
    assert _installs(root) == 0
    so.unlink()  # `make clean`
    assert _installs(root) == 2
