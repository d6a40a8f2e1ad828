# SPDX-License-Identifier: MIT
"""``fastmta suppress add|remove|list|check``: the node's suppression list (spool/suppression.py).

Works while ``serve`` runs: the list is in LMDB, and the next delivery of every
worker sees a change. With ``[cluster] redis`` a change also goes to the list's
outbox, which the node's running server publishes to the other nodes (at its start
when none runs now); the command itself never talks to Redis. Exit status:
``check`` 0 suppressed, 1 not; ``remove`` 1 when an address was not on the list;
2 bad configuration; 64 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from fastmta.commands import add_config_arg, load_config_or_exit
from fastmta.spool import admin, suppression
from fastmta.spool.suppression import Entry


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fastmta suppress", description="Manage the suppression list.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    commands = {"add": "suppress addresses", "remove": "lift suppressions", "list": "list entries",
                "check": "is an address suppressed? (exit 0 yes, 1 no)"}  # fmt: skip
    for name, text in commands.items():
        p = sub.add_parser(name, help=text)
        add_config_arg(p)
        p.add_argument("--tenant", default=None, help="one tenant's entries (default: the global list)")
        if name in ("add", "remove"):
            p.add_argument("addresses", nargs="+", metavar="ADDR")
        if name == "check":
            p.add_argument("address", metavar="ADDR")
        if name == "add":
            p.add_argument("--reason", default="manual", help="why (kept with the entry)")
        if name == "list":
            p.add_argument("--json", action="store_true", help="one JSON object per line")
    return ap


def main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as stop:
        return 64 if stop.code not in (0, None) else 0
    cfg = load_config_or_exit(args.config)
    store = admin.open_store(suppression.node_config(cfg.spool))
    try:
        db = suppression.open_db(store)
        outbox = suppression.open_outbox(store) if cfg.cluster.redis else None
        tenant = args.tenant or ""
        if args.cmd == "add":
            bad = [a for a in args.addresses if "@" not in a]
            if bad:
                print(f"fastmta suppress: not an address: {', '.join(bad)}", file=sys.stderr)
                return 64
            n = suppression.add(store, db, [Entry(a, tenant, args.reason) for a in args.addresses], outbox)
            print(f"{n} address(es) suppressed" + (f" for tenant {tenant}" if tenant else " globally"))
            return 0
        if args.cmd == "remove":
            n = suppression.remove(store, db, args.addresses, tenant, outbox)
            print(f"{n} of {len(args.addresses)} address(es) removed")
            return 0 if n == len(args.addresses) else 1
        if args.cmd == "check":
            hit = suppression.lookup(store, db, args.address, tenant)
            if hit is None:
                print(f"{suppression.normalize(args.address)}: not suppressed")
                return 1
            scope = f"tenant {hit.tenant}" if hit.tenant else "globally"
            print(f"{hit.address}: suppressed {scope} since {_iso(hit.time)} ({hit.reason})")
            return 0
        for e in suppression.entries(store, db, args.tenant):
            if args.json:
                print(json.dumps({"address": e.address, "tenant": e.tenant, "reason": e.reason,
                                  "time": _iso(e.time)}))  # fmt: skip
            else:
                print(f"{e.address}\t{e.tenant or '*'}\t{_iso(e.time)}\t{e.reason}")
        return 0
    finally:
        store.close()
