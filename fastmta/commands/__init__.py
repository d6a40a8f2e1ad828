# SPDX-License-Identifier: MIT
"""Subcommands of ``fastmta``; shared argument handling lives here."""

from __future__ import annotations

import argparse
import sys

from fastmta import config


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
