# SPDX-License-Identifier: MIT
"""``fastmta/_parser.pyi`` is the one declared API of both parser twins: mypy's stubtest
checks it against the compiled extension and against the pure-Python twin.

The twin has no stub of its own, so the same file is copied in as
``fastmta/_parser_py.pyi`` in a directory put first on mypy's search path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

STUB = ROOT / "fastmta" / "_parser.pyi"

# What stubtest cannot see or states another way, one reason each.
ALLOWED = {
    # Cython's __init__ of a cdef class is a slot wrapper without a signature
    # (``*args, **kwargs``); the twin's signature is checked, and calls with
    # arguments raise TypeError in both.
    "fastmta._parser": ["fastmta._parser.ReplyParser.__init__"],
    # The stub marks the classes @disjoint_base (true of the extension types);
    # stubtest would rather see the twin's __slots__ there, which say the same.
    "fastmta._parser_py": ["fastmta._parser_py.CommandParser", "fastmta._parser_py.ReplyParser"],
}


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_stub_matches_the_runtime(module: str, tmp_path: Path) -> None:
    allowlist = tmp_path / "allowlist"
    allowlist.write_text("\n".join(ALLOWED[module]) + "\n")
    env = dict(os.environ)
    if module != "fastmta._parser":
        stubs = tmp_path / "stubs" / "fastmta"
        stubs.mkdir(parents=True)
        (stubs / "__init__.pyi").write_text("")
        shutil.copy(STUB, stubs / f"{module.rpartition('.')[2]}.pyi")
        env["MYPYPATH"] = str(stubs.parent)
    # From the checkout: mypy finds the package (and its stub) in the working directory,
    # not through the editable install's import hook. A stub it could not find would pass
    # silently, but then every allowlist entry goes unused, and stubtest fails on those.
    cmd = [sys.executable, "-m", "mypy.stubtest", "--allowlist", str(allowlist), module]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
