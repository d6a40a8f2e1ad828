# SPDX-License-Identifier: MIT
"""Durable accept benchmark: fastmta beside Postfix, aiosmtpd and the bare-uvloop limit.

    .venv/bin/python bench/accept.py [--quick] [--reps 3] [--json OUT]

Every system runs at once on its own loopback port; each measurement drives one
of them with ``smtp-source`` or ``fastmta load`` for a bounded count (sized from a
warm-up so one run lasts about ``--seconds``), in an order that rotates each
repetition, so drifting background load spreads over all systems alike. Reports
accepted msgs/s and MB/s, client-side p50/p99 transaction latency (fastmta load),
and the server's CPU time per accepted message (from /proc). ``smtp-sink`` is in
the line-up as the load tools' own ceiling, and ``fastmta-nosync`` (``[spool] sync =
false``, not durable) shows what the fsyncs cost. Medians of the repetitions with min–max.

``--baseline TREE`` adds ``fastmta-base``: the same server from another checkout (with
its own ``.venv``), for an A/B comparison in one run. For every fastmta system and
scenario ``vs_limit`` puts its server CPU per message beside the limit's and its
share of the limit's rate (MB/s at 100 KiB). ``limit-durable`` is the limit plus
LMDB durability and nothing else (``bench/servers/durable_limit.py``): its CPU
above the limit's is what keeping mail costs any server of this design, so
``vs_limit`` also shows it, and fastmta against it.

The disk's flush latency is measured in the same run (``bench/disk.py``): at one
connection each message waits for its own commit, so the limit's time per message
plus that floor bounds what any LMDB-durable server can reach there (``floors``).

"≤100 msgs/conn" cells: ``fastmta load -m 100``, and ``smtp-source -d``, which spreads
the run's count over its connections (so up to 100, fewer in short runs). At the
end every durable system's store is counted against the 250s it gave.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import disk, drivers, peers, report  # noqa: E402


@dataclass(frozen=True)
class Scenario:
    name: str
    size: int
    connections: int
    per_connection: int  # 1 = a new connection per message; larger = reuse, up to this many

    @property
    def label(self) -> str:
        size = f"{self.size // 1024} KiB"
        per = "1 msg/conn" if self.per_connection == 1 else f"≤{self.per_connection} msgs/conn"
        return f"{size}, {self.connections} conn, {per}"


# The cells with a target (report.GOALS) come first; --full adds the rest of the matrix.
SCENARIOS = [
    Scenario("4k-50c-1m", 4096, 50, 1),
    Scenario("4k-50c-100m", 4096, 50, 100),
    Scenario("100k-50c-1m", 102400, 50, 1),
    Scenario("4k-1c-100m", 4096, 1, 100),
]
FULL_EXTRA = [
    Scenario("100k-50c-100m", 102400, 50, 100),
    Scenario("4k-1c-1m", 4096, 1, 1),
    Scenario("100k-1c-100m", 102400, 1, 100),
]

SYSTEMS: dict[str, Callable[[], peers.Peer]] = {
    "fastmta": lambda: peers.Fastmta(hold=True),
    "fastmta-nometrics": lambda: peers.Fastmta(hold=True, metrics=False, name="fastmta-nometrics"),
    "fastmta-nosync": lambda: peers.Fastmta(hold=True, sync=False, name="fastmta-nosync"),
    "postfix": lambda: peers.Postfix(hold=True),
    "aiosmtpd-sink": lambda: peers.Aiosmtpd(durable=False),
    "aiosmtpd-durable": lambda: peers.Aiosmtpd(durable=True),
    "limit": peers.Limit,
    "limit-durable": peers.DurableLimit,
    "smtp-sink": peers.SmtpSink,
}
DRIVERS = ("smtp-source", "fastmta-load")


def measure(peer: peers.Peer, sc: Scenario, driver: str, count: int, timeout: float) -> dict[str, Any]:
    """One bounded run against one system; adds the server's CPU µs per accepted message.

    Starts with ``os.sync()``: a system that does not fsync (``fastmta-nosync``) leaves
    up to gigabytes of dirty pages, and their writeback must not slow the fsyncs of
    whichever durable system runs next. Measured at 100 KiB (3 reps, same systems):
    Postfix took 751 msg/s without this sync and 1,004 with it.
    """
    os.sync()
    cpu0 = peer.cpu()
    if driver == "smtp-source":
        res = drivers.smtp_source(
            peer.address, count, sc.connections, sc.per_connection > 1, sc.size, timeout
        )
    else:
        res = drivers.fastmta_load(peer.address, count, sc.connections, sc.per_connection, sc.size, timeout)
    cpu = peer.cpu() - cpu0
    out = res.as_dict()
    out["count"] = count
    out["cpu_us_per_msg"] = round(cpu / res.ok * 1e6, 1) if res.ok else None
    return out


def plan_count(sc: Scenario, rate: float, seconds: float, cap: int) -> int:
    """Messages for one run of about ``seconds``: whole rounds of connections, within [min, cap]."""
    floor = max(200, sc.connections * min(sc.per_connection, 10) * 2)
    n = int(rate * seconds)
    n -= n % sc.connections
    return max(floor, min(cap, n))


def order(systems: list[str], rep: int) -> list[str]:
    """Rotate by the repetition and reverse every other one: no system always runs first."""
    k = rep % len(systems)
    rotated = systems[k:] + systems[:k]
    return rotated[::-1] if rep % 2 else rotated


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per scenario, driver and system: median and min–max of rate, MB/s, p99, CPU/msg."""
    cells: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in runs:
        if not r.get("warmup"):
            cells.setdefault((r["scenario"], r["driver"], r["system"]), []).append(r)
    out: dict[str, Any] = {}
    for (sc, drv, system), rs in cells.items():
        good = [r for r in rs if r["ok"] and not r["failed"]]
        cell: dict[str, Any] = {"reps": len(rs), "good_reps": len(good)}
        for key in ("rate", "mb_s", "p50_ms", "p99_ms", "cpu_us_per_msg", "client_cpu_us_per_msg"):
            vals = [r[key] for r in good if r.get(key) is not None]
            if vals:
                cell[key] = {"median": round(statistics.median(vals), 2), "min": round(min(vals), 2),
                             "max": round(max(vals), 2)}  # fmt: skip
        errors: dict[str, int] = {}
        for r in rs:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        if errors:
            cell["errors"] = errors
        out.setdefault(sc, {}).setdefault(drv, {})[system] = cell
    return out


def ratios(summary: dict[str, Any], base: str = "fastmta") -> dict[str, Any]:
    """fastmta ÷ each other system, by median rate (MB/s for the 100 KiB cells), per scenario and driver."""
    out: dict[str, Any] = {}
    for sc, by_drv in summary.items():
        key = "mb_s" if sc.startswith("100k") else "rate"
        for drv, by_sys in by_drv.items():
            mine = by_sys.get(base, {}).get(key, {}).get("median")
            if not mine:
                continue
            for system, cell in by_sys.items():
                theirs = cell.get(key, {}).get("median")
                if system != base and theirs:
                    out.setdefault(sc, {}).setdefault(drv, {})[system] = round(mine / theirs, 2)
    return out


def vs_limit(summary: dict[str, Any]) -> dict[str, Any]:
    """Each fastmta system against the bare-uvloop limit, per scenario and driver: server CPU
    µs per message of both, their ratio, and the share of the limit's rate (MB/s at 100 KiB).

    With ``limit-durable`` in the run, also its CPU per message, its own ratio to the
    limit (what durability alone costs) and fastmta's ratio to it."""
    out: dict[str, Any] = {}
    for sc, by_drv in summary.items():
        key = "mb_s" if sc.startswith("100k") else "rate"
        for drv, by_sys in by_drv.items():
            limit = by_sys.get("limit", {})
            limit_rate = limit.get(key, {}).get("median")
            limit_cpu = limit.get("cpu_us_per_msg", {}).get("median")
            durable = by_sys.get("limit-durable", {})
            durable_cpu = durable.get("cpu_us_per_msg", {}).get("median")
            durable_rate = durable.get(key, {}).get("median")
            for system, cell in by_sys.items():
                if not system.startswith("fastmta"):
                    continue
                rate = cell.get(key, {}).get("median")
                cpu = cell.get("cpu_us_per_msg", {}).get("median")
                row = {"cpu_us_per_msg": cpu, "limit_cpu_us_per_msg": limit_cpu}
                if cpu and limit_cpu:
                    row["cpu_over_limit"] = round(cpu / limit_cpu, 2)
                if rate and limit_rate:
                    row["share_of_limit_rate"] = round(rate / limit_rate, 2)
                if durable_cpu:
                    row["durable_limit_cpu_us_per_msg"] = durable_cpu
                    if limit_cpu:
                        row["durable_limit_over_limit"] = round(durable_cpu / limit_cpu, 2)
                    if cpu:
                        row["cpu_over_durable_limit"] = round(cpu / durable_cpu, 2)
                if rate and durable_rate:
                    row["share_of_durable_limit_rate"] = round(rate / durable_rate, 2)
                out.setdefault(sc, {}).setdefault(drv, {})[system] = row
    return out


def floors(summary: dict[str, Any], scenarios: list[Scenario], commit_floor_us: float,
           spool_floor_us: float | None = None) -> dict[str, Any]:  # fmt: skip
    """One-connection cells: the best rate a durable server could reach (limit + flush floor).

    Each message there waits for its own commit before the client sends the next, so
    the bare protocol's time per message and the disk's two ordered flushes add up.
    With ``spool_floor_us`` (a commit shaped like one of fastmta's spool, bench/disk.py),
    also the best rate for a server that writes what fastmta's spool writes per message.
    """
    out: dict[str, Any] = {}
    for sc in scenarios:
        if sc.connections != 1:
            continue
        for drv, by_sys in summary.get(sc.name, {}).items():
            med = {
                s: by_sys.get(s, {}).get("rate", {}).get("median")
                for s in ("limit", "postfix", "fastmta", "limit-durable")
            }
            if not med["limit"]:
                continue
            limit_us = 1e6 / med["limit"]
            best = 1e6 / (limit_us + commit_floor_us)
            cell = {"limit_us_per_msg": round(limit_us, 1), "commit_floor_us": commit_floor_us,
                    "durable_ceiling_rate": round(best, 1)}  # fmt: skip
            if med["postfix"]:
                cell["ceiling_over_postfix"] = round(best / med["postfix"], 2)
            if med["fastmta"]:
                cell["fastmta_share_of_ceiling"] = round(med["fastmta"] / best, 2)
            if med["limit-durable"]:
                cell["durable_limit_share_of_ceiling"] = round(med["limit-durable"] / best, 2)
            if spool_floor_us:
                spool_best = 1e6 / (limit_us + spool_floor_us)
                cell["spool_commit_floor_us"] = spool_floor_us
                cell["spool_ceiling_rate"] = round(spool_best, 1)
                if med["fastmta"]:
                    cell["fastmta_share_of_spool_ceiling"] = round(med["fastmta"] / spool_best, 2)
            out.setdefault(sc.name, {})[drv] = cell
    return out


def run(quick: bool, reps: int, seconds: float, systems: list[str], scenarios: list[Scenario],
        driver_names: tuple[str, ...], log: Callable[[str], None],
        baseline: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """Start every system, run the rotating matrix, stop every system; the JSON result."""
    started: dict[str, peers.Peer] = {}
    unavailable: dict[str, str] = {}
    runs: list[dict[str, Any]] = []
    t0 = time.monotonic()
    flush = disk.flush_latency(tempfile.gettempdir())  # the disk the peers keep their stores on
    probes = [flush]
    log(
        f"disk: one-page commit floor {flush['commit_floor_us']} µs "
        f"(fdatasync {flush['data_page_fdatasync_us']} + O_DSYNC meta write {flush['meta_dsync_write_us']}); "
        f"spool-shaped commit floor {flush['spool_commit_floor_us']} µs"
    )
    timeout = 60.0 if quick else 180.0
    cap = 30_000 if quick else 200_000
    try:
        for name in systems:
            try:
                peer = peers.Fastmta(hold=True, name=name, root=baseline) if name == "fastmta-base" else None
                started[name] = (peer or SYSTEMS[name]()).start()
                log(f"started {name} on {started[name].address} (pid {started[name].pid})")
            except Exception as e:  # a peer that cannot start is reported, not fatal
                unavailable[name] = f"{type(e).__name__}: {e}"[:300]
                log(f"cannot start {name}: {unavailable[name]}")
        live = [s for s in systems if s in started]
        rates: dict[tuple[str, str, str], float] = {}
        for rep in range(-1, reps):  # rep -1 is the warm-up that also sizes the runs
            for sc in scenarios:
                if rep >= 0 and sc.connections == 1:  # flush times drift: probe beside the runs they bound
                    probes.append(disk.flush_latency(tempfile.gettempdir(), samples=50))
                for drv in driver_names:
                    for system in order(live, max(rep, 0) + scenarios.index(sc)):
                        cell = (sc.name, drv, system)
                        if rep < 0:
                            count = plan_count(sc, 0, 0, cap)
                        else:
                            count = plan_count(sc, rates.get(cell, 100.0), seconds, cap)
                        r = measure(started[system], sc, drv, count, timeout)
                        r.update(scenario=sc.name, system=system, rep=rep, warmup=rep < 0)
                        runs.append(r)
                        if r["ok"]:
                            rates[cell] = r["rate"]
                        log(f"rep {rep:>2} {sc.name:<14} {drv:<12} {system:<18} {r['rate']:>9.1f} msg/s"
                            f"  p99 {r['p99_ms'] if r['p99_ms'] is not None else '-':>7}"
                            f"  cpu/msg {r['cpu_us_per_msg'] or '-':>8} µs"
                            f"{'  ERR ' + str(r['errors']) if r['failed'] else ''}")  # fmt: skip
        stored = {name: _stored(peer) for name, peer in started.items()}
    finally:
        for peer in started.values():
            with contextlib.suppress(Exception):
                peer.stop()
    summary = summarise(runs)
    flush = disk.combine(probes)
    log(f"disk over the run ({len(probes)} probes): one-page commit floor {flush['commit_floor_us']} µs, "
        f"spool-shaped {flush['spool_commit_floor_us']} µs")  # fmt: skip
    against_limit = vs_limit(summary)
    for sc, by_drv in against_limit.items():
        for drv, by_sys in by_drv.items():
            for system, row in by_sys.items():
                log(f"{sc:<14} {drv:<12} {system:<18} cpu/msg {row['cpu_us_per_msg']} µs"
                    f" (limit {row['limit_cpu_us_per_msg']}: {row.get('cpu_over_limit', '-')}×)"
                    f"  rate {row.get('share_of_limit_rate', '-')} of the limit's"
                    + (f"; durable limit {row['durable_limit_cpu_us_per_msg']} µs"
                       f" ({row.get('durable_limit_over_limit', '-')}× the limit,"
                       f" fastmta {row.get('cpu_over_durable_limit', '-')}× it,"
                       f" rate {row.get('share_of_durable_limit_rate', '-')} of it)"
                       if "durable_limit_cpu_us_per_msg" in row else ""))  # fmt: skip
    return {
        "bench": "accept",
        "quick": quick,
        "reps": reps,
        "seconds_per_run": seconds,
        "scenarios": {sc.name: sc.label for sc in scenarios},
        "systems": systems,
        "unavailable": unavailable,
        "stored_check": stored,
        "summary": summary,
        "ratios": ratios(summary),
        "vs_limit": against_limit,
        "baseline": str(baseline) if baseline else None,
        "disk": flush,
        "floors": floors(summary, scenarios, flush["commit_floor_us"], flush["spool_commit_floor_us"]),
        "runs": runs,
        "elapsed_s": round(time.monotonic() - t0, 1),
    }


def _stored(peer: peers.Peer) -> int | None:
    """What a durable system holds on disk at the end (None when it stores nothing)."""
    if isinstance(peer, peers.Postfix):
        return peer.queued()
    if isinstance(peer, peers.Aiosmtpd) and peer.durable:
        return sum(1 for _ in (peer.workdir / "mail").iterdir())
    if isinstance(peer, peers.Fastmta):
        return peer.queued()
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter runs (the < 10 minute suite)")
    ap.add_argument("--full", action="store_true", help="the whole size × connections × reuse matrix")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=None, help="target length of one run")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset")
    ap.add_argument("--scenarios", default=None, help="comma-separated subset of scenario names")
    ap.add_argument("--drivers", default=",".join(DRIVERS))
    ap.add_argument("--json", nargs="?", const="-", metavar="OUT", help="write JSON to OUT (- = stdout)")
    ap.add_argument("--baseline", type=Path, metavar="TREE",
                    help="also run fastmta-base: the checkout at TREE, with its own .venv")  # fmt: skip
    args = ap.parse_args(argv)
    peers.stop_on_sigterm()
    scenarios = SCENARIOS + (FULL_EXTRA if args.full else [])
    if args.scenarios:
        wanted = args.scenarios.split(",")
        scenarios = [s for s in SCENARIOS + FULL_EXTRA if s.name in wanted]
    systems = [s for s in args.systems.split(",") if s]
    if args.baseline:
        systems.append("fastmta-base")
    bad = [s for s in systems if s not in SYSTEMS and not (s == "fastmta-base" and args.baseline)]
    if bad:
        ap.error(f"unknown systems {bad}; known: {list(SYSTEMS)}")
    seconds = args.seconds or (0.8 if args.quick else 4.0)
    result = run(args.quick, args.reps, seconds, systems, scenarios, tuple(args.drivers.split(",")),
                 lambda line: print(line, file=sys.stderr, flush=True), args.baseline)  # fmt: skip
    report.write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
