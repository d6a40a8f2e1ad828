# SPDX-License-Identifier: MIT
"""Relay benchmark: smtp-source → MTA → smtp-sink, and the drain of a full spool.

    .venv/bin/python bench/relay.py [--quick] [--reps 3] [--drain N] [--json OUT]

End to end: fastmta and Postfix each relay the same bounded load (4 KiB, 50
client connections, one message per connection and reused connections) to the
same ``smtp-sink``, in alternating order; the rate is measured from the first
message sent to the last message counted by the sink.

Drain: a fastmta spool pre-filled with N messages (delivery held) is restarted
with delivery on and a route to the sink; Postfix, its hold queue filled the same
way, is released with ``postsuper -H ALL``. Reports msgs/s, the connections each
opened (sessions the sink saw plus those still open) and the peak RSS of the
delivering process tree.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import drivers, peers, report  # noqa: E402

SIZE = 4096
CONNECTIONS = 50
SCENARIOS = {"4k-50c-1m": False, "4k-50c-100m": True}  # name → reuse connections
STALL = 20.0  # seconds without a message at the sink: the MTA is stuck, stop waiting


def established(port: int) -> int:
    """TCP connections to ``port`` on loopback that are open now (from /proc/net/tcp).

    Counted by peer address: the kernel writes the table in pieces, so a socket can be
    listed twice when connections come and go during the read."""
    peers_seen = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            parts = line.split()
            if parts[3] == "01" and int(parts[1].rsplit(":", 1)[1], 16) == port:  # 01 = ESTABLISHED
                peers_seen.add(parts[2])
    return len(peers_seen)


class RssSampler:
    """Peak RSS and PSS of a process tree, sampled every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid, self.interval, self.peak, self.peak_pss = pid, interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, peers.rss_bytes(self.pid))
            self.peak_pss = max(self.peak_pss, peers.pss_bytes(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def end_to_end(
    mta: peers.Peer, sink: peers.SmtpSink, count: int, reuse: bool, timeout: float
) -> dict[str, Any]:
    """One bounded relay run: inject with smtp-source, wait until the sink has every message."""
    _, before = sink.counts()
    cpu0, sink_cpu0 = mta.cpu(), sink.cpu()
    start = time.perf_counter()
    res = drivers.smtp_source(mta.address, count, CONNECTIONS, reuse, SIZE, timeout)
    accepted_in = time.perf_counter() - start
    arrived = sink.wait_messages(before + count, timeout, stall=STALL) if res.ok else False
    _, after = sink.counts()
    elapsed = (sink.last_message_at - start) if arrived else time.perf_counter() - start
    return {
        "count": count,
        "accepted": res.ok,
        "delivered": after - before,
        "complete": bool(arrived),
        "accept_rate": round(res.ok / accepted_in, 1) if res.ok else 0.0,
        "rate": round((after - before) / elapsed, 1) if elapsed > 0 else 0.0,
        "elapsed_s": round(elapsed, 3),
        "cpu_us_per_msg": round((mta.cpu() - cpu0) / max(1, after - before) * 1e6, 1),
        "client_cpu_us_per_msg": res.client_cpu_us_per_msg,
        "sink_cpu_us_per_msg": round((sink.cpu() - sink_cpu0) / max(1, after - before) * 1e6, 1),
        "errors": res.errors,
    }


def timed_drain(sink: peers.SmtpSink, queued: int, release: Callable[[], int], timeout: float,
                cpu: Callable[[], float]) -> dict[str, Any]:  # fmt: skip
    """Call ``release`` (it returns the pid of the delivering process tree), then time the sink.

    msgs/s from the release to the last message counted, the connections opened
    (sessions the sink saw plus those still open) and the tree's peak RSS.
    """
    sessions_before, before = sink.counts()
    open_before = established(sink.port)
    start = time.perf_counter()
    pid = release()
    with RssSampler(pid) as rss:
        done = sink.wait_messages(before + queued, timeout, stall=STALL)
        end = sink.last_message_at if done else time.perf_counter()
        sessions, after = sink.counts()
        opened = sessions - sessions_before + established(sink.port) - open_before
    delivered = after - before
    return {
        "queued": queued,
        "delivered": delivered,
        "complete": bool(done),
        "elapsed_s": round(end - start, 2),
        "rate": round(delivered / (end - start), 1) if end > start else 0.0,
        "connections_opened": opened,
        "msgs_per_connection": round(delivered / opened, 1) if opened else None,
        "peak_rss_mb": round(rss.peak / 2**20, 1),
        "peak_pss_mb": round(rss.peak_pss / 2**20, 1),
        "cpu_us_per_msg": round(cpu() / max(1, delivered) * 1e6, 1),
    }


def drain_fastmta(sink: peers.SmtpSink, n: int, timeout: float, log: Callable[[str], None]) -> dict[str, Any]:
    """Fill a held fastmta spool with ``n`` messages, restart it with delivery on, time the drain."""
    filler = peers.Fastmta(hold=True, name="fastmta-fill").start()
    try:
        t = time.perf_counter()
        fill = drivers.fastmta_load(filler.address, n, CONNECTIONS, 100, SIZE, timeout, pipelining=True)
        log(f"drain fastmta: filled {fill.ok}/{n} in {time.perf_counter() - t:.1f} s ({fill.rate:.0f} msg/s)")
        filler.stop(keep_spool=True)
        mta = peers.Fastmta(hold=False, relay_to=sink.address, spool=filler.spool, name="fastmta-drain")

        def release() -> int:
            mta.start()  # recovery scan, then the scheduler finds every message due
            return mta.pid

        try:
            return timed_drain(sink, fill.ok, release, timeout, lambda: mta.cpu())
        finally:
            mta.stop()
    finally:
        filler.stop()


def drain_postfix(sink: peers.SmtpSink, n: int, timeout: float, log: Callable[[str], None]) -> dict[str, Any]:
    """The same for Postfix: fill its hold queue, ``postsuper -H ALL`` releases it to be delivered."""
    mta = peers.Postfix(hold=True, relayhost=sink.address).start()
    try:
        t = time.perf_counter()
        fill = drivers.fastmta_load(mta.address, n, CONNECTIONS, 100, SIZE, timeout, pipelining=True)
        log(f"drain postfix: filled {fill.ok}/{n} in {time.perf_counter() - t:.1f} s ({fill.rate:.0f} msg/s)")
        cpu0 = mta.cpu()

        def release() -> int:
            subprocess.run([peers.tool("postsuper"), "-c", str(mta.conf), "-H", "ALL"], check=True,
                           capture_output=True, timeout=120)  # fmt: skip
            return mta.pid

        return timed_drain(sink, fill.ok, release, timeout, lambda: mta.cpu() - cpu0)
    finally:
        mta.stop()


def run(quick: bool, reps: int, drain_n: int, systems: list[str], log: Callable[[str], None],
        count: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Start the sink and the MTAs, run the alternating end-to-end matrix, then the drain."""
    count = count or (2000 if quick else 10_000)
    timeout = 120.0 if quick else 600.0
    runs: list[dict[str, Any]] = []
    unavailable: dict[str, str] = {}
    t0 = time.monotonic()
    sink = peers.SmtpSink().start()
    mtas: dict[str, peers.Peer] = {}
    try:
        makers: dict[str, Callable[[], peers.Peer]] = {
            "fastmta": lambda: peers.Fastmta(hold=False, relay_to=sink.address),
            "postfix": lambda: peers.Postfix(hold=False, relayhost=sink.address),
        }
        for name in systems:
            try:
                mtas[name] = makers[name]().start()
                log(f"started {name} on {mtas[name].address}, relaying to smtp-sink {sink.address}")
            except Exception as e:  # reported in the JSON, the other system still runs
                unavailable[name] = f"{type(e).__name__}: {e}"[:300]
                log(f"cannot start {name}: {unavailable[name]}")
        live = list(mtas)
        for rep in range(reps):
            for sc, reuse in SCENARIOS.items():
                for name in live if rep % 2 == 0 else live[::-1]:
                    r = end_to_end(mtas[name], sink, count, reuse, timeout)
                    r.update(system=name, scenario=sc, rep=rep)
                    runs.append(r)
                    log(f"rep {rep} {sc:<12} {name:<8} {r['rate']:>8.1f} msg/s end to end"
                        f" (accept {r['accept_rate']:.0f}/s, {r['delivered']}/{count} arrived)")  # fmt: skip
    finally:
        for peer in mtas.values():
            with contextlib.suppress(Exception):
                peer.stop()
    drained: dict[str, Any] = {}
    try:
        for name, fn in (("fastmta", drain_fastmta), ("postfix", drain_postfix)):
            if not drain_n or name not in systems or name in unavailable:
                continue
            try:
                drained[name] = fn(sink, drain_n, max(timeout, drain_n / 50), log)
            except Exception as e:  # the other numbers still stand
                drained[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
            log(f"drain {name}: {drained[name]}")
    finally:
        sink.stop()
    summary: dict[str, Any] = {}
    for sc in SCENARIOS:
        for name in live:
            vals = [r["rate"] for r in runs if r["scenario"] == sc and r["system"] == name and r["complete"]]
            if vals:
                summary.setdefault(sc, {})[name] = {
                    "median": round(statistics.median(vals), 1), "min": min(vals), "max": max(vals),
                    "complete_reps": len(vals), "reps": reps,
                }  # fmt: skip
    ratios = {
        sc: round(cell["fastmta"]["median"] / cell["postfix"]["median"], 2)
        for sc, cell in summary.items()
        if "fastmta" in cell and "postfix" in cell and cell["postfix"]["median"]
    }
    return {
        "bench": "relay",
        "quick": quick,
        "count_per_run": count,
        "unavailable": unavailable,
        "summary": summary,
        "ratios_fastmta_over_postfix": ratios,
        "drain": drained,
        "runs": runs,
        "elapsed_s": round(time.monotonic() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2,000 messages per run, a 10,000-message drain")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--drain", type=int, default=None, help="messages in the drain test (0 = skip)")
    ap.add_argument("--systems", default="fastmta,postfix")
    ap.add_argument(
        "--count", type=int, default=None, help="messages per end-to-end run [2,000 quick; 10,000]"
    )
    ap.add_argument("--json", nargs="?", const="-", metavar="OUT", help="write JSON to OUT (- = stdout)")
    args = ap.parse_args(argv)
    peers.stop_on_sigterm()
    drain_n = args.drain if args.drain is not None else (10_000 if args.quick else 100_000)
    result = run(args.quick, args.reps, drain_n, args.systems.split(","),
                 lambda line: print(line, file=sys.stderr, flush=True), args.count)  # fmt: skip
    report.write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
