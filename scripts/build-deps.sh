#!/bin/sh
# Print the Debian packages that building fastmta needs and this machine lacks
# (nothing when all are there): python3's venv module for scripts/venv.sh, and gcc
# with the Python headers for the Cython parser. serve.sh and install-tools.sh use it.
set -eu
need=""
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need="$need python3-venv"
python3 -c 'import os, sysconfig; exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  >/dev/null 2>&1 || need="$need python3-dev"
command -v gcc >/dev/null 2>&1 || need="$need gcc"
echo $need
