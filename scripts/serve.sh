#!/bin/sh
# Set up (venv, compiled parser) and run fastmta on its embedded defaults.
set -eu
cd "$(dirname "$0")/.."
FASTMTA_EXTRAS=test sh scripts/venv.sh
exec .venv/bin/fastmta serve "$@"
