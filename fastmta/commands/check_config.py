# SPDX-License-Identifier: MIT
"""``fastmta check-config``: exit 0 when the configuration and the files it names are usable,
else list every error (naming its key) and exit 2; warnings are printed either way."""

from __future__ import annotations

import argparse
import sys

from fastmta.commands import add_config_arg, load_checked_or_exit


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fastmta check-config")
    add_config_arg(parser)
    args = parser.parse_args(argv)
    cfg = load_checked_or_exit(args.config)
    print(f"{cfg.source or 'embedded defaults'}: ok", file=sys.stderr)
    return 0
