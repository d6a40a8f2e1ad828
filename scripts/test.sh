#!/bin/sh
# Install every tool the suite talks to, build the extension, lint and type-check
# (the Makefile's lint and typecheck targets), and run the whole suite twice: with
# the Cython parser (required) and with the pure-Python twin.
#
# Each pass runs on FASTMTA_TEST_WORKERS pytest-xdist workers (default 4). Most tests
# wait on sockets and subprocesses, so more workers than cores pays; "worksteal" lets
# an idle worker take over tests queued behind a long one. Arguments go to both passes
# and come last, so "-n 0" runs a pass in one process.
set -eu
cd "$(dirname "$0")/.."
sh scripts/install-tools.sh
FASTMTA_EXTRAS=test,bench sh scripts/venv.sh
make lint typecheck
export CI="${CI:-1}"
n="${FASTMTA_TEST_WORKERS:-4}"
FASTMTA_REQUIRE_CYTHON=1 .venv/bin/python -m pytest -q -n "$n" --dist worksteal "$@"
FASTMTA_PURE_PYTHON=1 .venv/bin/python -m pytest -q -n "$n" --dist worksteal "$@"
