#!/bin/sh
# Install every tool the suite talks to, build the extension, lint and type-check
# (the Makefile's lint and typecheck targets), and run the whole suite twice: with
# the Cython parser (required) and with the pure-Python twin.
set -eu
cd "$(dirname "$0")/.."
sh scripts/install-tools.sh
FASTMTA_EXTRAS=test,bench sh scripts/venv.sh
make lint typecheck
export CI="${CI:-1}"
FASTMTA_REQUIRE_CYTHON=1 .venv/bin/python -m pytest -q "$@"
FASTMTA_PURE_PYTHON=1 .venv/bin/python -m pytest -q "$@"
