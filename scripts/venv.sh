#!/bin/sh
# Create .venv and install fastmta into it (compiling the Cython parser). Idempotent.
# FASTMTA_EXTRAS names the extras (default "test"); empty installs the runtime only.
# The install is skipped when .venv/.fastmta-stamp shows this checkout installed with
# the same build mode, pyproject.toml and setup.py and at least these extras, and the
# compiled parser is newer than _parser.pyx: a new dependency, other extras or an
# edited .pyx reinstalls.
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras=${FASTMTA_EXTRAS-test}
stamp_file=.venv/.fastmta-stamp
[ -x .venv/bin/python ] || "$PY" -m venv .venv
build="$(pwd) debug=${FASTMTA_DEBUG:-} $(cat pyproject.toml setup.py | cksum | cut -d' ' -f1) pyx=$(stat -c %Y fastmta/_parser.pyx)"
installed=""  # extras installed by a build like this one
if [ "$(head -n 1 "$stamp_file" 2>/dev/null)" = "$build" ] \
  && ls .venv/lib/python*/site-packages/__editable__*fastmta*.pth >/dev/null 2>&1 \
  && [ -n "$(find fastmta -maxdepth 1 -name '_parser*.so' -newer fastmta/_parser.pyx)" ]; then
  installed=$(sed -n 2p "$stamp_file")
  missing=""
  for e in $(echo "$extras" | tr ',' ' '); do
    case ",$installed," in *",$e,"*) ;; *) missing=1 ;; esac
  done
  [ -n "$missing" ] || exit 0
fi
rm -f "$stamp_file"
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel "Cython>=3,<4"
.venv/bin/python -m pip install -q --no-build-isolation -e ".${extras:+[$extras]}"
printf '%s\n%s\n' "$build" "${installed:+$installed,}$extras" >"$stamp_file"
