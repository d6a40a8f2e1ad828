# SPDX-License-Identifier: MIT
"""``fastmta http token NAME``: a new bearer token for the HTTP API.

Prints the token (stdout, line 1: give it to the client; it is shown only now)
and the ``name:sha256`` line to append to ``[http] tokens_file`` (line 2). The
file holds only the hash, so it never needs to hide the token itself. With
``--append FILE`` the line is appended there (created 0600) instead of printed.
"""

from __future__ import annotations

import argparse
import os
import sys

from fastmta.api import tokens


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="fastmta http", description="HTTP API administration.")
    sub = ap.add_subparsers(dest="action", required=True)
    tok = sub.add_parser("token", help="print a new token and its tokens_file line")
    tok.add_argument("name", help="who the token is for (the tenant of what it injects)")
    tok.add_argument("--append", metavar="FILE", help="append the line to FILE (created 0600)")
    args = ap.parse_args(argv)
    try:
        token, line = tokens.new(args.name)
    except tokens.TokensError as e:
        print(f"fastmta http token: {e}", file=sys.stderr)
        return 64
    if args.append:
        try:
            fd = os.open(args.append, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a") as f:
                f.write(line + "\n")
        except OSError as e:
            print(f"fastmta http token: cannot write {args.append}: {e.strerror}", file=sys.stderr)
            return 73
        print(token)
        print(f"fastmta http token: appended the line for {args.name} to {args.append}", file=sys.stderr)
        return 0
    print(token)
    print(line)
    return 0
