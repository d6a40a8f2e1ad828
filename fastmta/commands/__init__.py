# SPDX-License-Identifier: MIT
"""Subcommands of ``fastmta``; shared argument handling lives here."""

from __future__ import annotations

import argparse
import sys

from fastmta import config, preflight


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    """Every subcommand takes ``--config FILE``; ``$FASTMTA_CONFIG`` is the fallback."""
    parser.add_argument(
        "--config", "-c", metavar="FILE", default=None,
        help=f"TOML configuration (default: ${config.ENV_VAR}, else the embedded defaults)",
    )  # fmt: skip


def load_config_or_exit(path: str | None) -> config.Config:
    """Load the configuration or print every error and exit 2."""
    try:
        return config.load(path)
    except config.ConfigError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
        raise SystemExit(2) from None


def load_checked_or_exit(path: str | None, warn: bool = True) -> config.Config:
    """Load the configuration and check the files it names; print every error and exit 2.
    Warnings go to stderr too (``warn``) but let the command go on."""
    cfg = load_config_or_exit(path)
    errors = preflight.problems(cfg)
    for line in errors:
        print(line, file=sys.stderr)
    if errors:
        raise SystemExit(2)
    for line in preflight.warnings(cfg) if warn else ():
        print(f"warning: {line}", file=sys.stderr)
    return cfg
