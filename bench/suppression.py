# SPDX-License-Identifier: MIT
"""What the suppression list costs on the relay path: an empty list against 1,000,000 entries.

    .venv/bin/python bench/suppression.py [--quick] [--reps 3] [--entries 1000000] [--json OUT]

Two fastmta instances relay the same load (smtp-source → fastmta → smtp-sink, 4 KiB,
50 connections, reused connections: relay.py's ``end_to_end``) in alternating order;
one starts with an empty list, the other with ``--entries`` suppression entries
written into its spool before it starts. None of the entries matches the bench
recipient, so every check is a full LMDB lookup that misses (the common case). The
budget is a median relay rate within 2 % of the empty list's; on a busy machine the
rate swings far more than that between runs, so the median CPU time fastmta spent
per relayed message is compared too, and the check itself
(``SuppressionList.suppressed`` of one recipient) is timed on both lists.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import drivers, peers, relay, report  # noqa: E402
from fastmta.config import SpoolConfig  # noqa: E402
from fastmta.spool import suppression  # noqa: E402
from fastmta.spool.store import Store  # noqa: E402

BUDGET = 0.02
_BATCH = 100_000


def fill(spool: Path, entries: int) -> float:
    """Write ``entries`` global entries into the list of the spool at ``spool``; seconds taken."""
    t = time.perf_counter()
    node = suppression.node_config(SpoolConfig(path=str(spool)))
    store = Store(node.path, 1024**3, 1024**4)
    try:
        db = suppression.open_db(store)
        for start in range(0, entries, _BATCH):
            batch = [suppression.Entry(f"user{i}@suppressed{i % 997}.test", reason="bench")
                     for i in range(start, min(entries, start + _BATCH))]  # fmt: skip
            suppression.add(store, db, batch)
    finally:
        store.close()
    return time.perf_counter() - t


def check_cost(spool: Path, n: int = 100_000) -> float:
    """Microseconds per ``suppressed()`` call for one recipient (a miss)."""
    lst = suppression.SuppressionList.open(SpoolConfig(path=str(spool)))
    try:
        rcpt = [(0, drivers.RECIPIENT)]
        t = time.perf_counter()
        for _ in range(n):
            lst.suppressed(rcpt, "")
        return (time.perf_counter() - t) / n * 1e6
    finally:
        lst.close()


def _median(runs: list[dict[str, Any]], name: str, field: str) -> float:
    return float(statistics.median([r[field] for r in runs if r["list"] == name and r["complete"]] or [0.0]))


def run(quick: bool, reps: int, entries: int, log: Any) -> dict[str, Any]:
    count = 2000 if quick else 10_000
    timeout = 120.0 if quick else 600.0
    sink = peers.SmtpSink().start()
    empty = peers.Fastmta(hold=False, relay_to=sink.address, name="fastmta-empty")
    full = peers.Fastmta(hold=False, relay_to=sink.address, name="fastmta-1m")
    costs = {"empty": check_cost(empty.spool)}
    filled_in = fill(full.spool, entries)
    costs["full"] = check_cost(full.spool)
    log(f"{entries} entries written in {filled_in:.1f} s; one check: {costs['empty']:.2f} µs empty, "
        f"{costs['full']:.2f} µs with {entries}")  # fmt: skip
    runs: list[dict[str, Any]] = []
    mtas = {"empty": empty, "full": full}
    try:
        for m in mtas.values():
            m.start()
        for rep in range(reps):
            for name in ("empty", "full") if rep % 2 == 0 else ("full", "empty"):
                r = relay.end_to_end(mtas[name], sink, count, True, timeout)
                r.update(list=name, rep=rep)
                runs.append(r)
                log(f"rep {rep} {name:<5} {r['rate']:>8.1f} msg/s ({r['delivered']}/{count} arrived)")
    finally:
        for m in mtas.values():
            m.stop()
        sink.stop()
    med = {n: _median(runs, n, "rate") for n in mtas}
    cost = round(1 - med["full"] / med["empty"], 4) if med["empty"] else None
    # fastmta's CPU per relayed message: far steadier than the rate on a machine shared with others
    cpu = {n: _median(runs, n, "cpu_us_per_msg") for n in mtas}
    cpu_cost = round(cpu["full"] / cpu["empty"] - 1, 4) if cpu["empty"] else None
    return {
        "bench": "suppression",
        "entries": entries,
        "count_per_run": count,
        "median_rate": med,
        "cost": cost,
        "within_budget": cost is not None and cost <= BUDGET,
        "median_cpu_us_per_msg": cpu,
        "cpu_cost": cpu_cost,
        "check_us": {k: round(v, 2) for k, v in costs.items()},
        "fill_s": round(filled_in, 1),
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2,000 messages per run")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--json", nargs="?", const="-", metavar="OUT", help="write JSON to OUT (- = stdout)")
    args = ap.parse_args(argv)
    peers.stop_on_sigterm()
    result = run(args.quick, args.reps, args.entries, lambda line: print(line, file=sys.stderr, flush=True))
    report.write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
