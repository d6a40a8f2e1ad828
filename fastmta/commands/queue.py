# SPDX-License-Identifier: MIT
"""``fastmta queue list|show|flush|delete|bounce|stats|transfer``: inspect and steer the spool.

Works while ``serve`` runs (LMDB is multi-process; the server sees a flush or a
delete within about a second) and when it does not, over every spool shard on
disk (``<path>`` and ``<path>/<n>/`` of ``[server] workers``, spool/shards.py). ``list`` streams, so a queue
of a million messages prints without being loaded. Exit status: 0 done, 1 some
ids not found (or no spool), 2 bad configuration, 64 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from fastmta.commands import add_config_arg, load_config_or_exit, transfer
from fastmta.config import parse_hostport
from fastmta.spool import admin, ops, records, shards
from fastmta.spool.ids import is_valid
from fastmta.spool.store import Store

EX_USAGE = 64


iso = admin.iso
row = admin.row


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fastmta queue", description="Inspect and steer the mail queue.")
    sub = ap.add_subparsers(
        dest="cmd", required=True, metavar="{list,show,flush,delete,bounce,stats,transfer}"
    )
    p = sub.add_parser("list", help="one row per queued message")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p = sub.add_parser("show", help="envelope and headers of one message")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.add_argument("--body", action="store_true", help="the whole message, not just its headers")
    p = sub.add_parser("flush", help="retry now: the given messages, a domain's, or all")
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--domain", metavar="D", help="messages with a pending recipient at D")
    p = sub.add_parser("delete", help="remove messages without notice")
    p.add_argument("ids", nargs="+", metavar="ID")
    p = sub.add_parser("bounce", help="fail the pending recipients; the server bounces them to the sender")
    p.add_argument("ids", nargs="+", metavar="ID")
    p = sub.add_parser("stats", help="counts by state, bytes, oldest message, map use")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("transfer", help="move queued mail to another node over SMTP (drain this one)")
    p.add_argument("--to", required=True, metavar="HOST:PORT", help="the other node's SMTP listener")
    p.add_argument("--domain", metavar="D", help="only recipients at D")
    for p in sub.choices.values():
        add_config_arg(p)
    return ap


def main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        return EX_USAGE if e.code else 0
    full = load_config_or_exit(args.config)
    cfg = full.spool
    ids = getattr(args, "ids", None) or ([args.id] if getattr(args, "id", None) else [])
    bad = [i for i in ids if not is_valid(i)]
    if bad:
        print(f"fastmta queue: not a message id: {' '.join(bad)}", file=sys.stderr)
        return EX_USAGE
    if args.cmd == "flush" and ids and args.domain:
        print("fastmta queue flush: give ids or --domain, not both", file=sys.stderr)
        return EX_USAGE
    if not shards.present(cfg):
        if args.cmd in ("list", "stats"):
            return _stats_empty(args) if args.cmd == "stats" else 0
        print(f"fastmta queue: no spool at {cfg.path}", file=sys.stderr)
        return 1
    to = None
    if args.cmd == "transfer":
        try:
            to = parse_hostport(args.to)
        except ValueError as e:
            print(f"fastmta queue transfer: --to: {e}", file=sys.stderr)
            return EX_USAGE
    stores = shards.open_all(cfg)
    try:
        if to is not None:
            return transfer.run(full, stores, to, args.domain)
        return _COMMANDS[args.cmd](stores, args, ids)
    except BrokenPipeError:  # `fastmta queue list | head`: the reader has what it wants
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        for store in stores:
            store.close()


def _warn_damaged(msg_id: str, why: str) -> None:
    print(f"fastmta queue: {msg_id}: damaged record ({why}); the server quarantines it", file=sys.stderr)


def _list(stores: list[Store], args: argparse.Namespace, ids: list[str]) -> int:
    """One line per message (``| wc -l`` counts messages, plus the heading): its pending
    recipients as a count; ``queue show ID`` or ``--json`` name them."""
    out = sys.stdout
    if not args.json:
        out.write(f"{'ID':<16} {'Size':>9} {'Arrived':<20} {'Next attempt':<20} {'Tries':>5} "
                  f"{'Rcpts':>5}  Sender\n")  # fmt: skip
    for n, env in enumerate(shards.iter_envelopes(stores, _warn_damaged)):
        if args.json:
            out.write(json.dumps(row(env), ensure_ascii=False) + "\n")
        else:
            pending = sum(r.pending for r in env.rcpts)
            out.write(f"{env.id:<16} {env.size:>9} {iso(env.arrived):<20} {iso(env.next_attempt):<20} "
                      f"{env.attempts:>5} {pending:>5}  <{env.sender}>\n")  # fmt: skip
        if n % 1000 == 999:
            out.flush()
    return 0


def _show(stores: list[Store], args: argparse.Namespace, ids: list[str]) -> int:
    store = shards.locate(stores, args.id)
    raw = None if store is None else store.envelope_raw(args.id.encode("ascii"))
    if store is None or raw is None:
        print(f"fastmta queue: {args.id}: not in the queue", file=sys.stderr)
        return 1
    try:
        env = records.decode(args.id, raw)
    except records.RecordError as e:
        _warn_damaged(args.id, str(e))
        return 1
    body = store.body(env.id.encode("ascii")) if args.body else admin.first_chunk(store, env.id)
    text = (body or b"") if args.body else admin.headers(body)
    if args.json:
        doc = admin.show_doc(env)
        doc["headers" if not args.body else "message"] = text.decode("utf-8", "replace")
        print(json.dumps(doc, ensure_ascii=False, indent=1))
        return 0
    w = sys.stdout.write
    w(f"id:           {env.id}\nfrom:         <{env.sender}>\nsize:         {env.size}\n")
    w(f"arrived:      {iso(env.arrived)}\nnext attempt: {iso(env.next_attempt)}\n")
    w(f"attempts:     {env.attempts}\n")
    w(f"client:       {env.client_ip} ({env.helo}) on {env.listener}\n")
    if env.params:
        w("params:       " + " ".join(f"{k}={v}" for k, v in env.params.items()) + "\n")
    if env.last_error:
        w(f"last error:   {env.last_error}\n")
    for r in env.rcpts:
        extra = f" orcpt={r.orcpt}" if r.orcpt else ""
        extra += f" notify={r.notify}" if r.notify else ""
        err = f"  {r.last_error}" if r.last_error else ""
        w(f"rcpt:         <{r.addr}> {r.state} attempts={r.attempts}{extra}{err}\n")
    w("\n")
    sys.stdout.flush()
    sys.stdout.buffer.write(text)
    return 0


def _report(verb: str, changed: int, missing: list[str]) -> int:
    for msg_id in missing:
        print(f"fastmta queue: {msg_id}: not in the queue", file=sys.stderr)
    print(f"{verb} {changed} message{'s' if changed != 1 else ''}", file=sys.stderr)
    return 1 if missing else 0


def _flush(stores: list[Store], args: argparse.Namespace, ids: list[str]) -> int:
    """Make messages due now, then lift the throttling of their destinations (after: the
    scheduler must find them due once it lifts it)."""
    now = time.time()
    if ids:
        domains: set[str] = set()
        result = _apply_ids(stores, ids, admin.flush_fn(now, domains))
        if domains:
            for store in stores:
                admin.signal_flush(store, domains)
        return _report("flushed", *result)
    changed = 0
    for store in stores:
        if args.domain:
            targets: Any = list(admin.ids_for_domain(store, args.domain))
        else:
            targets = (env.id for env in admin.iter_envelopes(store, _warn_damaged))
        changed += admin.apply(store, targets, admin.flush_fn(now))[0]
        admin.signal_flush(store, [args.domain] if args.domain else None)
    return _report("flushed", changed, [])


def _apply_ids(stores: list[Store], ids: list[str], fn: Any) -> tuple[int, list[str]]:
    """``admin.apply`` over every shard: an id is missing only if no shard held it."""
    changed, missing = 0, ids
    for store in stores:
        n, missing = admin.apply(store, missing, fn)
        changed += n
    return changed, missing


def _delete(stores: list[Store], args: argparse.Namespace, ids: list[str]) -> int:
    return _report("deleted", *_apply_ids(stores, ids, ops.remove))


def _bounce(stores: list[Store], args: argparse.Namespace, ids: list[str]) -> int:
    return _report("bounce requested for", *_apply_ids(stores, ids, admin.bounce_fn(time.time())))


def _stats_doc(st: admin.Stats) -> dict[str, Any]:
    return {
        "messages": st.messages, "bytes": st.bytes, "recipients": st.recipients, "new": st.new,
        "deferred": st.deferred, "due_now": st.due_now, "oldest_arrived": iso(st.oldest_arrived),
        "damaged": st.damaged, "quarantined": st.quarantined, "map_used_bytes": st.map_used_bytes,
        "map_free_bytes": st.map_free_bytes, "map_high_water_bytes": st.map_high_water_bytes,
        "map_size_bytes": st.map_size_bytes, "max_map_size_bytes": st.max_map_size_bytes,
    }  # fmt: skip


def _stats(stores: list[Store], args: argparse.Namespace, ids: list[str]) -> int:
    per_shard = [admin.stats(store) for store in stores]
    doc = _stats_doc(shards.merge(per_shard))
    if len(stores) > 1:  # [server] workers > 1: how the queue spreads over the shards
        doc["shards"] = dict(zip(_shard_names(stores), (st.messages for st in per_shard), strict=True))
    return _print_stats(doc, args.json)


def _shard_names(stores: list[Store]) -> list[str]:
    """``0``, ``1``… for ``<path>/<n>``; ``.`` for ``<path>`` itself (listed first when present)."""
    paths = [os.path.normpath(s.path) for s in stores]
    top = paths[0] if os.path.dirname(paths[1]) == paths[0] else None
    return ["." if p == top else os.path.basename(p) for p in paths]


def _stats_empty(args: argparse.Namespace) -> int:
    return _print_stats(_stats_doc(admin.Stats()), args.json)


def _print_stats(doc: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(doc))
        return 0
    for key, value in doc.items():
        if isinstance(value, dict):
            value = " ".join(f"{k}={v}" for k, v in value.items())
        print(f"{key.replace('_', ' ') + ':':<20} {value}")
    return 0


_COMMANDS = {"list": _list, "show": _show, "flush": _flush, "delete": _delete, "bounce": _bounce,
             "stats": _stats}  # fmt: skip
