#!/bin/sh
# Set up and run fastmta on its embedded defaults: the Debian packages the build
# needs (when missing), .venv with the runtime dependencies only, the compiled parser.
# Arguments go to `fastmta serve` (--config FILE).
set -eu
cd "$(dirname "$0")/.."
need=$(sh scripts/build-deps.sh)
if [ -n "$need" ]; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  echo "serve.sh: installing $need" >&2
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
fi
FASTMTA_EXTRAS= sh scripts/venv.sh
exec .venv/bin/fastmta serve "$@"
