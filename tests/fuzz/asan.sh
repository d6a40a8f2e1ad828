#!/bin/sh
# Build the Cython parser with AddressSanitizer + UBSan in a scratch directory and
# run the differential fuzzer against it (the parser turns bounds checks off, so
# this is how its pointer arithmetic gets checked). Usage: sh tests/fuzz/asan.sh [SECONDS] [SEED]
set -eu
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
PY="$ROOT/.venv/bin/python"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir "$WORK/fastmta"
cp fastmta/__init__.py fastmta/_events.py fastmta/_parser_py.py fastmta/_parser.pyx "$WORK/fastmta/"
cd "$WORK"
# Two builds: the SSE2 scanner and the portable memchr one (what non-x86 gets).
for variant in simd portable; do
  rm -rf build fastmta/_parser*.so fastmta/_parser.c
  VARIANT=$variant "$PY" - >/dev/null <<'PY'
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

flags = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined"]
macros = [("FASTMTA_NO_SIMD", "1")] if os.environ["VARIANT"] == "portable" else []
ext = Extension("fastmta._parser", ["fastmta/_parser.pyx"], extra_compile_args=flags,
                extra_link_args=flags[-1:], define_macros=macros)
setup(ext_modules=cythonize([ext], compiler_directives={"language_level": "3"}, quiet=True),
      script_args=["build_ext", "--inplace", "-q"])
PY
  # Every allocation through malloc, so ASan sees the bytes objects the parser writes.
  PYTHONMALLOC=malloc ASAN_OPTIONS=detect_leaks=0 \
  LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)" \
  "$PY" - "${1:-60}" "${2:-1}" "$WORK" "$ROOT" "$variant" <<'PY'
import sys

seconds, seed, work, root, variant = float(sys.argv[1]) / 2, int(sys.argv[2]), *sys.argv[3:]
sys.path[:0] = [work, root]
import fastmta._parser as built
from tests.fuzz import fuzz_parser

assert built.__file__.startswith(work) and fuzz_parser._parser is built
print(fuzz_parser.fuzz(seconds, seed), f"rounds under ASan/UBSan ({variant} scanner), no finding")
PY
done
