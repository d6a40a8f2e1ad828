# SPDX-License-Identifier: MIT
"""The ``fastmta`` command: picks a subcommand and hands it the rest of argv.

Each subcommand lives in ``fastmta/commands/<name>.py`` and owns its arguments
(``sendmail`` takes sendmail's own flags, which argparse cannot express). Invoked
as ``sendmail`` (a symlink named so), it behaves as ``fastmta sendmail``.
"""

from __future__ import annotations

import importlib
import os
import sys

COMMANDS = {
    "serve": ("serve", "run the MTA"),
    "check-config": ("check_config", "validate a configuration file"),
    "queue": ("queue", "list, show, flush, delete, bounce queued mail; queue stats"),
    "sendmail": ("sendmail", "sendmail-compatible injection from stdin"),
    "send": ("send", "compose a MIME message with attachments and submit it"),
    "load": ("load", "SMTP load generator"),
    "dkim": ("dkim", "DKIM keys: keygen writes a key and prints its DNS record"),
    "http": ("http", "HTTP API: token NAME prints a new bearer token and its tokens_file line"),
    "suppress": ("suppress", "add, remove, list, check suppressed recipient addresses"),
}

USAGE = (
    "usage: fastmta {"
    + ",".join(COMMANDS)
    + "} [--config FILE] ...\n\n"
    + "\n".join(f"  {name:<13} {text}" for name, (_, text) in COMMANDS.items())
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[:] if argv is None else ["fastmta", *argv]
    prog = os.path.basename(argv[0])
    if prog in ("sendmail", "mailq", "newaliases"):
        mode = {"mailq": ["-bp"], "newaliases": ["-bi"]}.get(prog, [])
        argv = ["fastmta", "sendmail", *mode, *argv[1:]]
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(USAGE, file=sys.stdout if len(argv) >= 2 else sys.stderr)
        return 0 if len(argv) >= 2 else 64
    entry = COMMANDS.get(argv[1])
    if entry is None:
        print(f"fastmta: unknown command {argv[1]!r}\n{USAGE}", file=sys.stderr)
        return 64
    module = importlib.import_module(f"fastmta.commands.{entry[0]}")
    return int(module.main(argv[2:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
