# SPDX-License-Identifier: MIT
"""The Dockerfile's build stage, without Docker: ``pip wheel`` on exactly what it copies.

The wheel must carry the compiled parser, and fastmta installed from it must pick
the Cython backend (the image sets FASTMTA_REQUIRE_CYTHON=1) and accept the
shipped config.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.fixtures.metrics import deploy_path
from tests.support import PYTHON, ROOT

pytestmark = pytest.mark.timeout(300)


def _copied_paths() -> list[str]:
    """Sources of the build stage's COPY lines (the context is the repository root)."""
    text = deploy_path("Dockerfile").read_text()
    build_stage = text.split(" AS build", 1)[1].split("\nFROM ", 1)[0]
    out = []
    for line in build_stage.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            out.extend(line.split()[1:-1])
    return out


def _wheel_check_code() -> str:
    """The ``python -c "…"`` program the build stage runs on the wheel (continuations joined)."""
    text = deploy_path("Dockerfile").read_text().replace("\\\n", "")
    match = re.search(r'&& python -c "(import glob[^"]*)"', text)
    assert match, "the build stage checks its wheel for the compiled parser"
    return match.group(1)


def test_wheel_from_the_build_stage_has_a_working_compiled_parser(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    copied = _copied_paths()
    assert set(copied) >= {"pyproject.toml", "setup.py", "fastmta"}
    for name in copied:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(
                path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c", "*.html")
            )
        else:
            shutil.copy(path, src / name)
    wheels = tmp_path / "wheels"
    # --no-build-isolation: Cython and setuptools from this venv (no network in tests);
    # the image lets pip fetch them.
    result = subprocess.run([PYTHON, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "--wheel-dir", str(wheels), str(src)],
                            capture_output=True, text=True, timeout=280)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = wheels.glob("fastmta-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(re.fullmatch(r"fastmta/_parser\..*\.so", n) for n in names), names
    # The Dockerfile's own check accepts this wheel.
    check_code = _wheel_check_code().replace("/wheels/", f"{wheels}/")
    subprocess.run([PYTHON, "-c", check_code], check=True, timeout=60)

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site), "FASTMTA_REQUIRE_CYTHON": "1"}
    env.pop("FASTMTA_PURE_PYTHON", None)
    probe = ("import fastmta, fastmta.parser as p; "
             "print(fastmta.__file__); print(p.backend)")  # fmt: skip
    out = subprocess.run([PYTHON, "-c", probe], capture_output=True, text=True, timeout=60, env=env,
                         cwd=tmp_path, check=True).stdout.split()  # fmt: skip
    assert out[0].startswith(str(site)) and out[1] == "cython"
    cmd = [PYTHON, "-m", "fastmta", "check-config", "--config", str(deploy_path("fastmta.toml"))]
    check = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
