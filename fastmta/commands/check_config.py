# SPDX-License-Identifier: MIT
"""``fastmta check-config``: exit 0 when the configuration is valid, else list errors and exit 2."""

from __future__ import annotations

import argparse
import sys

from fastmta.commands import add_config_arg, load_config_or_exit


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fastmta check-config")
    add_config_arg(parser)
    args = parser.parse_args(argv)
    cfg = load_config_or_exit(args.config)
    if cfg.dkim:
        from fastmta.dkim import keys

        errors = keys.check(cfg.dkim)
        if errors:
            print("\n".join(errors), file=sys.stderr)
            return 2
    print(f"{cfg.source or 'embedded defaults'}: ok", file=sys.stderr)
    return 0
