#!/bin/sh
# Create .venv and install fastmta into it (compiling the Cython parser). Idempotent.
# FASTMTA_EXTRAS names the extras (default "test"); empty installs the runtime only.
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras=${FASTMTA_EXTRAS-test}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel "Cython>=3,<4"
.venv/bin/python -m pip install -q --no-build-isolation -e ".${extras:+[$extras]}"
