# SPDX-License-Identifier: MIT
"""Cluster benchmark: nodes sharing per-destination limits through one Redis.

    .venv/bin/python bench/cluster.py [--quick] [--reps 2] [--hold 60] [--json OUT]

Relay: 1, 2 and 3 ``fastmta serve`` nodes with ``[cluster] redis`` relay the same
load (4 KiB, smtp-source with reused connections, split over the nodes) to one
``smtp-sink``; limits are generous (connections, and a message rate far above what
the machine does), so Redis is on every delivery's path but never the bound. In the
same run, one node with node-local limits (no Redis) against one node with Redis,
alternating: what the Redis path costs per message. Reported: msg/s end to end and
CPU µs per message of the node process trees.

Hold: 3 nodes with 2 connections and 50 msg/s per destination, fed more than they
may send, for ``--hold`` seconds: the most connections the sink saw open at once
(sampled every 20 ms from /proc/net/tcp) must stay ≤ 2 and the rate within 10 % of 50.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import drivers, peers, report  # noqa: E402
from bench.relay import established  # noqa: E402

SIZE = 4096
CONNECTIONS = 30
GENEROUS = "max_connections_per_destination = 40\nmessage_rate_per_destination = 1000000\n"
HOLD_LIMITS = 'max_connections_per_destination = 2\nmessage_rate_per_destination = 50\nidle_timeout = "2s"\n'
STALL = 20.0


def nodes(n: int, sink: str, redis: str | None, delivery: str, tag: str) -> list[peers.Fastmta]:
    """``n`` nodes relaying to ``sink``; with ``redis`` a cluster of their own (key prefix ``tag``)."""
    out = []
    try:
        for i in range(n):
            extra = ""
            if redis:
                extra = f'[cluster]\nnode_id = "{tag}{i}"\nredis = "{redis}"\nprefix = "{tag}:"\n'
            out.append(peers.Fastmta(hold=False, relay_to=sink, name=f"{tag}{i}", extra_config=extra,
                                     delivery=delivery).start())  # fmt: skip
    except BaseException:
        for p in out:
            p.stop()
        raise
    return out


def relay(group: list[peers.Fastmta], sink: peers.SmtpSink, count: int, timeout: float) -> dict[str, Any]:
    """``count`` messages split over the nodes (smtp-source each, in parallel) until the sink has all."""
    _, before = sink.counts()
    cpu0 = [p.cpu() for p in group]
    share = count // len(group)
    results: list[drivers.Result] = []
    start = time.perf_counter()
    threads = [threading.Thread(target=lambda p=p: results.append(
        drivers.smtp_source(p.address, share, max(1, CONNECTIONS // len(group)), True, SIZE, timeout)))
        for p in group]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = share * len(group)
    done = sink.wait_messages(before + total, timeout, stall=STALL)
    end = sink.last_message_at if done else time.perf_counter()
    _, after = sink.counts()
    cpu = [p.cpu() - c for p, c in zip(group, cpu0, strict=True)]
    got = after - before
    return {
        "nodes": len(group),
        "sent": sum(r.ok for r in results),
        "delivered": got,
        "complete": bool(done),
        "rate": round(got / (end - start), 1) if end > start else 0.0,
        "cpu_us_per_msg": round(sum(cpu) / max(1, got) * 1e6, 1),
        "cpu_us_per_msg_per_node": [round(c / max(1, got / len(group)) * 1e6, 1) for c in cpu],
    }


def hold_check(sink: peers.SmtpSink, redis: str, seconds: float, log: Any) -> dict[str, Any]:
    """Three nodes at 2 connections / 50 msg/s, fed enough for the whole window."""
    group = nodes(3, sink.address, redis, HOLD_LIMITS, "hold")
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, established(sink.port))
            time.sleep(0.02)

    try:
        per_node = int(50 * (seconds + 10) / 3)
        for p in group:  # queued first (held back by the limits), then the window is measured
            drivers.smtp_source(p.address, per_node, 10, True, SIZE, 120)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        time.sleep(3)  # past the first batch of tokens
        _, c0 = sink.counts()
        t0 = time.perf_counter()
        time.sleep(seconds)
        _, c1 = sink.counts()
        elapsed = time.perf_counter() - t0
        stop.set()
        sampler.join()
        # a node that found Redis too slow (``[cluster] timeout``) kept to its share meanwhile
        fallbacks = sum(p.log_tail(100_000).count("Redis unreachable") for p in group)
    finally:
        for p in group:
            p.stop()
    rate = (c1 - c0) / elapsed
    res = {
        "seconds": round(elapsed, 1),
        "limit_connections": 2,
        "limit_rate": 50,
        "max_connections_seen": peak,
        "rate": round(rate, 2),
        "rate_error_pct": round((rate - 50) / 50 * 100, 1),
        "redis_fallbacks": fallbacks,
    }
    res["holds"] = peak <= 2 and abs(rate - 50) <= 5
    log(f"hold check: {res}")
    return res


def run(quick: bool, reps: int, hold: float, log: Any, count: int | None = None) -> dict[str, Any]:
    count = count or (3000 if quick else 12_000)
    timeout = 300.0
    t0 = time.monotonic()
    runs: list[dict[str, Any]] = []
    sink = peers.SmtpSink().start()
    redis = peers.Redis().start()
    try:
        for rep in range(reps):
            for variant in ("local", "redis") if rep % 2 == 0 else ("redis", "local"):
                group = nodes(1, sink.address, redis.url if variant == "redis" else None, GENEROUS, variant)
                try:
                    r = relay(group, sink, count, timeout)
                finally:
                    for p in group:
                        p.stop()
                r.update(variant=variant, rep=rep)
                runs.append(r)
                log(f"rep {rep} 1 node {variant:<5} {r['rate']:>8.1f} msg/s, {r['cpu_us_per_msg']} us/msg")
            for n in (2, 3):
                group = nodes(n, sink.address, redis.url, GENEROUS, f"n{n}-")
                try:
                    r = relay(group, sink, count, timeout)
                finally:
                    for p in group:
                        p.stop()
                r.update(variant="redis", rep=rep)
                runs.append(r)
                log(f"rep {rep} {n} nodes redis {r['rate']:>8.1f} msg/s, {r['cpu_us_per_msg']} us/msg")
        held = hold_check(sink, redis.url, hold, log) if hold > 0 else {}
    finally:
        redis.stop()
        sink.stop()

    def med(variant: str, n: int, key: str) -> float | None:
        vals = [r[key] for r in runs if r["variant"] == variant and r["nodes"] == n and r["complete"]]
        return round(statistics.median(vals), 1) if vals else None

    summary = {f"{n}-{v}": {"rate": med(v, n, "rate"), "cpu_us_per_msg": med(v, n, "cpu_us_per_msg")}
               for n, v in ((1, "local"), (1, "redis"), (2, "redis"), (3, "redis"))}  # fmt: skip
    local, shared = summary["1-local"], summary["1-redis"]
    cost = None
    if local["rate"] and shared["rate"]:
        cost = {
            "throughput_pct": round((1 - shared["rate"] / local["rate"]) * 100, 1),
            "cpu_us_per_msg": round((shared["cpu_us_per_msg"] or 0) - (local["cpu_us_per_msg"] or 0), 1),
        }
    return {
        "bench": "cluster",
        "quick": quick,
        "count_per_run": count,
        "summary": summary,
        "redis_cost": cost,
        "hold": held,
        "runs": runs,
        "elapsed_s": round(time.monotonic() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3,000 messages per run")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--count", type=int, default=None, help="messages per relay run [3,000 quick; 12,000]")
    ap.add_argument("--hold", type=float, default=60.0, help="seconds of the 3-node hold check (0 = skip)")
    ap.add_argument("--json", nargs="?", const="-", metavar="OUT", help="write JSON to OUT (- = stdout)")
    args = ap.parse_args(argv)
    peers.stop_on_sigterm()
    result = run(args.quick, args.reps, args.hold, lambda line: print(line, file=sys.stderr, flush=True),
                 args.count)  # fmt: skip
    report.write_json(result, args.json)
    return 0 if result["hold"].get("holds", True) else 1


if __name__ == "__main__":
    sys.exit(main())
