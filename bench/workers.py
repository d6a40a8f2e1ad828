# SPDX-License-Identifier: MIT
"""Worker processes: durable accept and relay with ``workers = 1`` and ``2`` in one run.

    .venv/bin/python bench/workers.py [--quick] [--reps 3] [--seconds 8] [--json OUT]

Accept: both servers run at once (``hold = true``, each on its own port and
spool) and take turns, alternating which goes first, under the same bounded
load from ``smtp-source`` (50 sessions, 4 KiB, a new connection per message and
reused connections; 200 sessions, where each of two workers is as busy as one
worker is with 50). Each run reports accepted msgs/s, the server's CPU per
accepted message (utime + stime of the whole process tree: supervisor, workers
and their spool writers, from /proc), the same split by role (event loops,
spool writers, supervisor: is it the halved group commits or the loops?) and
the load generator's own CPU per message (it shares the two cores). Relay: the same load relayed to one
``smtp-sink``, timed until the sink has every message. The ratios
between the two are computed from the medians of the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import drivers, peers, relay  # noqa: E402
from bench.accept import SCENARIOS, Scenario, plan_count  # noqa: E402

WORKERS = (1, 2)
# the target cell first; 200 sessions gives each of 2 workers the load one worker gets from 50
BUSY = Scenario("4k-200c-1m", 4096, 200, 1)
ACCEPT_SCENARIOS = [sc for sc in SCENARIOS if sc.name in ("4k-50c-1m", "4k-50c-100m")] + [BUSY]
MUST = {
    "accept_rate_ratio_min": 1.3,
    "cpu_per_msg_ratio_max": 1.15,
    "cpu_per_msg_ratio_max_200_sessions": 1.10,
}


class WorkersFastmta(peers.Fastmta):
    """``peers.Fastmta`` with ``[server] workers = n``; started means every worker is ready."""

    def __init__(self, workers: int, hold: bool = True, relay_to: str | None = None) -> None:
        kind = "accept" if hold else "relay"
        super().__init__(hold=hold, relay_to=relay_to, name=f"fastmta-{kind}-w{workers}")
        self.workers = workers

    def write_config(self) -> None:
        super().write_config()
        with self.config.open("a") as f:
            f.write(f"\n[server]\nworkers = {self.workers}\n")

    def start(self) -> WorkersFastmta:
        super().start()
        m = re.search(r'\[metrics\]\naddress = "([^"]+)"', self.config.read_text())
        assert m is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # /healthz is 200 once every worker is ready
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"http://{m.group(1)}/healthz", timeout=2),
            ):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: not healthy after 30 s; log: {self.log_tail(8)}")


ROLES = ("loop", "writer", "supervisor")


def role_cpu(mta: WorkersFastmta) -> dict[str, float]:
    """CPU seconds of the live process tree by role: event-loop processes (the workers, or
    the one process with ``workers = 1``), their spool writers, and the supervisor."""
    out = dict.fromkeys(ROLES, 0.0)
    for pid in peers.process_tree(mta.pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"fastmta.spool.writer" in cmdline:
            role = "writer"
        elif pid == mta.pid and mta.workers > 1:
            role = "supervisor"
        else:
            role = "loop"
        out[role] += peers.own_cpu_seconds(pid)
    return out


def accept_run(mta: WorkersFastmta, sc: Scenario, count: int, timeout: float) -> dict[str, Any]:
    cpu0, gen0, roles0 = mta.cpu(), drivers.children_cpu(), role_cpu(mta)
    res = drivers.smtp_source(mta.address, count, sc.connections, sc.per_connection > 1, sc.size, timeout)
    cpu, gen, roles1 = mta.cpu() - cpu0, drivers.children_cpu() - gen0, role_cpu(mta)
    out = res.as_dict()
    for role in ROLES:  # where the CPU went: the loops, the spool writers (group commits), the supervisor
        spent = roles1[role] - roles0[role]
        out[f"{role}_cpu_us_per_msg"] = round(spent / res.ok * 1e6, 1) if res.ok else None
    out.update(count=count, server_cpu_s=round(cpu, 3), loadgen_cpu_s=round(gen, 3))
    out["cpu_us_per_msg"] = round(cpu / res.ok * 1e6, 1) if res.ok else None
    out["loadgen_cpu_us_per_msg"] = round(gen / res.ok * 1e6, 1) if res.ok else None
    out["server_cores"] = round(cpu / res.elapsed, 2) if res.elapsed else None
    out["loadgen_cores"] = round(gen / res.elapsed, 2) if res.elapsed else None
    return out


def median_cell(runs: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    good = [r for r in runs if r.get("ok", r.get("complete")) and not r.get("failed")]
    cell: dict[str, Any] = {"reps": len(runs), "good_reps": len(good)}
    for key in keys:
        vals = [r[key] for r in good if r.get(key) is not None]
        if vals:
            cell[key] = {"median": round(statistics.median(vals), 2), "min": round(min(vals), 2),
                         "max": round(max(vals), 2)}  # fmt: skip
    return cell


def ratio(summary: dict[str, Any], key: str) -> float | None:
    a = summary.get("w2", {}).get(key, {}).get("median")
    b = summary.get("w1", {}).get(key, {}).get("median")
    return round(a / b, 3) if a and b else None


def run(
    quick: bool, reps: int, seconds: float, relay_count: int, log: Callable[[str], None]
) -> dict[str, Any]:
    t0 = time.monotonic()
    timeout = 120.0 if quick else 300.0
    cap = 20_000 if quick else 100_000
    scenarios = ACCEPT_SCENARIOS[:1] if quick else ACCEPT_SCENARIOS
    runs: list[dict[str, Any]] = []
    servers: list[peers.Peer] = []
    try:
        accept = {n: WorkersFastmta(n).start() for n in WORKERS}
        servers.extend(accept.values())
        sink = peers.SmtpSink().start()
        servers.append(sink)
        relayers = {n: WorkersFastmta(n, hold=False, relay_to=sink.address).start() for n in WORKERS}
        servers.extend(relayers.values())
        for n, mta in accept.items():
            log(f"started workers={n} on {mta.address} (pid {mta.pid})")
        rates: dict[tuple[str, int], float] = {}
        for rep in range(-1, reps):  # rep -1: warm-up, sizes the runs
            for sc in scenarios:
                order = WORKERS if rep % 2 == 0 else WORKERS[::-1]
                for n in order:
                    count = plan_count(sc, rates.get((sc.name, n), 0.0) if rep >= 0 else 0.0, seconds, cap)
                    r = accept_run(accept[n], sc, count, timeout)
                    r.update(kind="accept", scenario=sc.name, workers=n, rep=rep, warmup=rep < 0)
                    runs.append(r)
                    if r["ok"]:
                        rates[(sc.name, n)] = r["rate"]
                    log(f"rep {rep:>2} accept {sc.name:<12} workers={n}  {r['rate']:>8.1f} msg/s  "
                        f"server {r['cpu_us_per_msg'] or '-':>7} µs/msg ({r['server_cores']} cores)  "
                        f"load gen {r['loadgen_cpu_us_per_msg'] or '-':>6} µs/msg"
                        f"{'  ERR ' + str(r['errors']) if r['failed'] else ''}")  # fmt: skip
            for n in WORKERS if rep % 2 == 0 else WORKERS[::-1]:
                r = relay.end_to_end(relayers[n], sink, relay_count, False, timeout)
                r.update(kind="relay", scenario="4k-50c-1m", workers=n, rep=rep, warmup=rep < 0)
                runs.append(r)
                log(f"rep {rep:>2} relay  4k-50c-1m    workers={n}  {r['rate']:>8.1f} msg/s  "
                    f"delivered {r['delivered']}/{r['count']}  "
                    f"server {r['cpu_us_per_msg']} µs/msg")  # fmt: skip
    finally:
        for peer in servers:
            with contextlib.suppress(Exception):
                peer.stop()
    measured = [r for r in runs if not r["warmup"]]
    summary: dict[str, Any] = {}
    keys = ("rate", "cpu_us_per_msg", "loadgen_cpu_us_per_msg", "server_cores", "loadgen_cores",
            *(f"{role}_cpu_us_per_msg" for role in ROLES))  # fmt: skip
    for sc in scenarios:
        summary[f"accept {sc.name}"] = {
            f"w{n}": median_cell([r for r in measured if r["kind"] == "accept" and r["scenario"] == sc.name
                                  and r["workers"] == n], keys)
            for n in WORKERS
        }  # fmt: skip
    summary["relay 4k-50c-1m"] = {
        f"w{n}": median_cell([r for r in measured if r["kind"] == "relay" and r["workers"] == n],
                             ("rate", "accept_rate", "cpu_us_per_msg"))
        for n in WORKERS
    }  # fmt: skip
    compared = ("rate", "cpu_us_per_msg", "loop_cpu_us_per_msg", "writer_cpu_us_per_msg")
    ratios = {cell: {key: ratio(s, key) for key in compared} for cell, s in summary.items()}
    main_cell = ratios[f"accept {scenarios[0].name}"]
    busy = ratios.get(f"accept {BUSY.name}", {}).get("cpu_us_per_msg")
    must = {
        "cpu_per_msg_ratio_200_sessions": busy,
        "cpu_per_msg_200_sessions_ok": bool(busy and busy <= MUST["cpu_per_msg_ratio_max_200_sessions"]),
        "accept_rate_ratio": main_cell["rate"],
        "accept_rate_ok": bool(main_cell["rate"] and main_cell["rate"] >= MUST["accept_rate_ratio_min"]),
        "cpu_per_msg_ratio": main_cell["cpu_us_per_msg"],
        "cpu_per_msg_ok": bool(
            main_cell["cpu_us_per_msg"] and main_cell["cpu_us_per_msg"] <= MUST["cpu_per_msg_ratio_max"]
        ),
    }
    return {
        "bench": "workers",
        "quick": quick,
        "reps": reps,
        "seconds_per_run": seconds,
        "machine_cpus": os.cpu_count(),
        "note": "load generator and servers share the cores; other processes may be running",
        "summary": summary,
        "ratios_w2_over_w1": ratios,
        "must_show": must,
        "runs": runs,
        "elapsed_s": round(time.monotonic() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one scenario, shorter runs")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=None, help="target length of one run")
    ap.add_argument("--relay-count", type=int, default=None, help="messages per relay run")
    ap.add_argument("--json", type=Path, help="write the JSON result here")
    args = ap.parse_args(argv)
    peers.stop_on_sigterm()
    seconds = args.seconds or (4.0 if args.quick else 8.0)
    relay_count = args.relay_count or (2000 if args.quick else 5000)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    result = run(args.quick, args.reps, seconds, relay_count, log)
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text)
    else:
        print(text)
    m = result["must_show"]
    log(f"workers=2 / workers=1: accept rate ×{m['accept_rate_ratio']} (must be ≥ 1.3), "
        f"CPU per message ×{m['cpu_per_msg_ratio']} (must be ≤ 1.15); at 200 sessions "
        f"×{m['cpu_per_msg_ratio_200_sessions']} (must be ≤ 1.10)")  # fmt: skip
    for cell, r in result["ratios_w2_over_w1"].items():
        log(f"{cell}: CPU per message ×{r['cpu_us_per_msg']} (event loops ×{r.get('loop_cpu_us_per_msg')}, "
            f"spool writers ×{r.get('writer_cpu_us_per_msg')})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
