# SPDX-License-Identifier: MIT
"""The Dockerfile's build stage, without Docker: ``pip wheel`` on exactly what it copies.

The wheel must carry the compiled parser, and fastmta installed from it must pick
the Cython backend (the image sets FASTMTA_REQUIRE_CYTHON=1) and accept the
shipped config. Every package-data pattern of pyproject.toml must name a file
that the wheel and the sdist really carry, and excluded ones none.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import tarfile
import tomllib
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


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(source tree as the build stage copies it, the wheel built from it), built once."""
    tmp_path = tmp_path_factory.mktemp("wheel")
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
    return src, wheel


def test_wheel_from_the_build_stage_has_a_working_compiled_parser(
    built: tuple[Path, Path], tmp_path: Path
) -> None:
    src, wheel = built
    wheels = wheel.parent
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


def test_every_package_data_pattern_ships_a_file(built: tuple[Path, Path], tmp_path: Path) -> None:
    src, wheel = built
    hook = "import sys; from setuptools import build_meta as b; print(b.build_sdist(sys.argv[1]))"
    subprocess.run([PYTHON, "-c", hook, str(tmp_path)], cwd=src, check=True, capture_output=True, timeout=120)
    (sdist,) = tmp_path.glob("fastmta-*.tar.gz")
    top = sdist.name.removesuffix(".tar.gz") + "/"
    with tarfile.open(sdist) as tar:
        in_sdist = [n.removeprefix(top) for n in tar.getnames()]
    in_wheel = zipfile.ZipFile(wheel).namelist()
    setuptools_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package, patterns in setuptools_cfg["package-data"].items():
        for pattern in patterns:
            where = f"{package.replace('.', '/')}/{pattern}"
            for name, files in (("wheel", in_wheel), ("sdist", in_sdist)):
                assert fnmatch.filter(files, where), f"package-data {where} matches nothing in the {name}"
    for package, patterns in setuptools_cfg["exclude-package-data"].items():
        for pattern in patterns:
            where = f"{package.replace('.', '/')}/{pattern}"
            assert not fnmatch.filter(in_wheel, where), f"{where} is excluded but in the wheel"
