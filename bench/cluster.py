# SPDX-License-Identifier: MIT
"""Cluster benchmark: nodes sharing per-destination limits through one Redis.

    .venv/bin/python bench/cluster.py [--quick] [--reps 2] [--hold 60] [--json OUT]

Relay: 1, 2 and 3 ``fastmta serve`` nodes with ``[cluster] redis`` relay the same
load (4 KiB, smtp-source with reused connections, split over the nodes) to one
``smtp-sink``; limits are generous (connections, and a message rate far above what
the machine does), so Redis is on every delivery's path but never the bound.

The cost of the Redis path: in the same run, one node with node-local limits (no
Redis) against one node with Redis, alternating (local, redis, then redis, local, ...)
so that drifting background load falls on both. Each run reports msg/s end to end and
CPU µs per message of the node process trees, of Redis, and of everything taking part
(nodes, Redis, smtp-source, smtp-sink): when the load and the MTA share the cores, the
lost throughput a quiet machine would show is about the ratio of that total. Also per
message: SMTP sessions the sink saw (up to the nodes' stop: smtp-sink counts a session
when it ends), Redis scripts and commands. ``redis_cost`` gives the
medians of the per-rep ratios (redis / local, run back to back) with their min–max.
``--baseline TREE`` adds a third 1-node run per rep, Redis with another checkout's code
(``redis-base``, ``redis_cost_baseline``): the A/B of a change to the Redis path.

Hold: 3 nodes with 2 connections and 50 msg/s per destination, fed more than they
may send, for ``--hold`` seconds: the most connections the sink saw open at once
(sampled every 20 ms from /proc/net/tcp) must stay ≤ 2 and the rate within 10 % of 50.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis as redislib

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import drivers, peers, report  # noqa: E402
from bench.relay import established  # noqa: E402

SIZE = 4096
CONNECTIONS = 30
GENEROUS = "max_connections_per_destination = 40\nmessage_rate_per_destination = 1000000\n"
HOLD_LIMITS = 'max_connections_per_destination = 2\nmessage_rate_per_destination = 50\nidle_timeout = "2s"\n'
STALL = 20.0


def nodes(n: int, sink: str, redis: str | None, delivery: str, tag: str,
          root: Path | None = None) -> list[peers.Fastmta]:  # fmt: skip
    """``n`` nodes relaying to ``sink``; with ``redis`` a cluster of their own (key prefix ``tag``);
    ``root``: run another checkout."""
    out = []
    try:
        for i in range(n):
            extra = ""
            if redis:
                extra = f'[cluster]\nnode_id = "{tag}{i}"\nredis = "{redis}"\nprefix = "{tag}:"\n'
            out.append(peers.Fastmta(hold=False, relay_to=sink, name=f"{tag}{i}", extra_config=extra,
                                     delivery=delivery, root=root).start())  # fmt: skip
    except BaseException:
        for p in out:
            p.stop()
        raise
    return out


def redis_calls(url: str) -> tuple[int, int]:
    """(scripts run, commands run) by Redis since it started, from ``INFO commandstats``;
    commands include those a script runs, and this bench's own ``INFO`` calls are left out."""
    client = redislib.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
    return calls.get("evalsha", 0) + calls.get("eval", 0), sum(calls.values()) - calls.get("info", 0)


def relay(group: list[peers.Fastmta], sink: peers.SmtpSink, redis: peers.Redis, count: int,
          timeout: float) -> dict[str, Any]:  # fmt: skip
    """``count`` messages split over the nodes (smtp-source each, in parallel) until the sink has all."""
    _, before = sink.counts()
    calls0 = redis_calls(redis.url)
    cpu0 = [p.cpu() for p in group]
    other0 = (redis.cpu(), sink.cpu(), drivers.children_cpu())
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
    other1 = (redis.cpu(), sink.cpu(), drivers.children_cpu())
    redis_cpu, sink_cpu, source_cpu = (b - a for a, b in zip(other0, other1, strict=True))
    scripts, commands = (b - a for a, b in zip(calls0, redis_calls(redis.url), strict=True))
    got = after - before
    per = 1e6 / max(1, got)
    return {
        "nodes": len(group),
        "sent": sum(r.ok for r in results),
        "delivered": got,
        "complete": bool(done),
        "rate": round(got / (end - start), 1) if end > start else 0.0,
        "cpu_us_per_msg": round(sum(cpu) * per, 1),
        "cpu_us_per_msg_per_node": [round(c / max(1, got / len(group)) * 1e6, 1) for c in cpu],
        "redis_cpu_us_per_msg": round(redis_cpu * per, 1),
        "sink_cpu_us_per_msg": round(sink_cpu * per, 1),
        "source_cpu_us_per_msg": round(source_cpu * per, 1),
        "total_cpu_us_per_msg": round((sum(cpu) + redis_cpu + sink_cpu + source_cpu) * per, 1),
        "redis_scripts_per_1000_msgs": round(scripts * per / 1000, 2),
        "redis_commands_per_1000_msgs": round(commands * per / 1000, 2),
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


KEYS = (
    "rate",
    "cpu_us_per_msg",
    "redis_cpu_us_per_msg",
    "total_cpu_us_per_msg",
    "sink_sessions_per_1000_msgs",
    "redis_scripts_per_1000_msgs",
    "redis_commands_per_1000_msgs",
)


def run(quick: bool, reps: int, hold: float, log: Any, count: int | None = None,
        scale: tuple[int, ...] = (2, 3), baseline: Path | None = None) -> dict[str, Any]:  # fmt: skip
    count = count or (3000 if quick else 12_000)
    timeout = 300.0
    t0 = time.monotonic()
    load0 = os.getloadavg()
    runs: list[dict[str, Any]] = []
    sink = peers.SmtpSink().start()
    redis = peers.Redis().start()

    def one(n: int, variant: str, tag: str, rep: int) -> None:
        url = redis.url if variant.startswith("redis") else None
        group = nodes(n, sink.address, url, GENEROUS, tag, baseline if variant == "redis-base" else None)
        sessions0, _ = sink.counts()
        try:
            r = relay(group, sink, redis, count, timeout)
        finally:
            for p in group:
                p.stop()
        # smtp-sink counts a session when it ends, and a kept connection ends with its node
        time.sleep(0.5)
        r["sink_sessions_per_1000_msgs"] = round(
            (sink.counts()[0] - sessions0) / max(1, r["delivered"]) * 1000, 2
        )
        r.update(variant=variant, rep=rep)
        runs.append(r)
        log(
            f"rep {rep} {n} node(s) {variant:<5} {r['rate']:>8.1f} msg/s; CPU us/msg nodes"
            f" {r['cpu_us_per_msg']} redis {r['redis_cpu_us_per_msg']} total {r['total_cpu_us_per_msg']};"
            f" per 1000 msgs: {r['sink_sessions_per_1000_msgs']} sessions,"
            f" {r['redis_scripts_per_1000_msgs']} redis scripts, {r['redis_commands_per_1000_msgs']} commands"
        )

    try:
        variants = ["local", "redis"] + (["redis-base"] if baseline else [])
        for rep in range(reps):
            for variant in variants if rep % 2 == 0 else variants[::-1]:
                one(1, variant, f"{variant}{rep}-", rep)
            for n in scale:
                one(n, "redis", f"n{n}r{rep}-", rep)
        held = hold_check(sink, redis.url, hold, log) if hold > 0 else {}
    finally:
        redis.stop()
        sink.stop()

    def pick(variant: str, n: int) -> list[dict[str, Any]]:
        return [r for r in runs if r["variant"] == variant and r["nodes"] == n and r["complete"]]

    summary = {f"{n}-{v}": {k: _med([r[k] for r in pick(v, n)]) for k in KEYS}
               for n, v in ((1, "local"), (1, "redis"), *((1, v) for v in variants[2:]),
                            *((n, "redis") for n in scale))}  # fmt: skip
    return {
        "bench": "cluster",
        "quick": quick,
        "count_per_run": count,
        "reps": reps,
        "loadavg_start_end": [round(load0[0], 2), round(os.getloadavg()[0], 2)],
        "summary": summary,
        "redis_cost": _cost(runs, "redis"),
        "baseline": str(baseline) if baseline else None,
        "redis_cost_baseline": _cost(runs, "redis-base") if baseline else None,
        "hold": held,
        "runs": runs,
        "elapsed_s": round(time.monotonic() - t0, 1),
    }


_T = "total_cpu_us_per_msg"


def _med(vals: list[float]) -> float | None:
    return round(statistics.median(vals), 2) if vals else None


def _cost(runs: list[dict[str, Any]], variant: str) -> dict[str, Any] | None:
    """``variant`` (Redis) against node-local, 1 node, rep by rep (run back to back): the median
    ratio and its min–max for throughput and for CPU per message; the throughput loss a
    CPU-bound machine would show is about ``total_cpu_ratio`` − 1."""
    pairs = []
    for rep in sorted({r["rep"] for r in runs}):
        one = {r["variant"]: r for r in runs if r["rep"] == rep and r["nodes"] == 1 and r["complete"]}
        if "local" in one and variant in one and one["local"]["rate"]:
            pairs.append((one["local"], one[variant]))
    if not pairs:
        return None

    def ratio(key: str) -> dict[str, float]:
        vals = [b[key] / a[key] for a, b in pairs if a[key]]
        return {
            "median": round(statistics.median(vals), 3),
            "min": round(min(vals), 3),
            "max": round(max(vals), 3),
        }

    return {
        "pairs": len(pairs),
        "throughput_ratio": ratio("rate"),
        "node_cpu_ratio": ratio("cpu_us_per_msg"),
        "total_cpu_ratio": ratio("total_cpu_us_per_msg"),
        "node_cpu_us_per_msg_delta": _med([b["cpu_us_per_msg"] - a["cpu_us_per_msg"] for a, b in pairs]),
        "total_cpu_us_per_msg_delta": _med([b[_T] - a[_T] for a, b in pairs]),
        "redis_cpu_us_per_msg": _med([b["redis_cpu_us_per_msg"] for _, b in pairs]),
        "meaning": "ratios are redis / node-local; throughput_ratio < 1 and cpu ratios > 1 are the cost",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3,000 messages per run")
    ap.add_argument("--reps", type=int, default=5, help="alternating local/redis pairs [5]; medians of them")
    ap.add_argument("--count", type=int, default=None, help="messages per relay run [3,000 quick; 12,000]")
    ap.add_argument("--nodes", default="2,3", help="node counts of the scaling runs with Redis ('' = none)")
    ap.add_argument(
        "--baseline",
        type=Path,
        metavar="TREE",
        help="also 1 node with Redis from another checkout (its own .venv), as redis-base",
    )
    ap.add_argument("--hold", type=float, default=60.0, help="seconds of the 3-node hold check (0 = skip)")
    ap.add_argument("--json", nargs="?", const="-", metavar="OUT", help="write JSON to OUT (- = stdout)")
    args = ap.parse_args(argv)
    peers.stop_on_sigterm()
    scale = tuple(int(n) for n in args.nodes.split(",") if n.strip())
    result = run(args.quick, args.reps, args.hold, lambda line: print(line, file=sys.stderr, flush=True),
                 args.count, scale, args.baseline)  # fmt: skip
    report.write_json(result, args.json)
    return 0 if result["hold"].get("holds", True) else 1


if __name__ == "__main__":
    sys.exit(main())
