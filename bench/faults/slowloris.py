# SPDX-License-Identifier: MIT
"""Slowloris against an SMTP server: N connections each drip one byte at a time, never a CRLF.

Each connection reads the banner, then sends one octet of a command line every
``--interval`` seconds until the server closes it or ``--max-time`` passes. It
prints one JSON object: per connection how long it held its slot, the replies it
saw and how it ended, plus a summary. A server that bounds a command line from its
first byte closes every connection near its ``command_timeout``; one that resets
its idle timer on every byte keeps them all until ``--max-time``.

    python -m bench.faults.slowloris --port 2525 --connections 20 --interval 2 --max-time 120
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

MAX_CONNECTIONS = 1000
MAX_TIME = 3600.0
LINE = b"NOOP " + b"x" * 1000  # dripped in order; a CRLF never comes


async def _drip(host: str, port: int, interval: float, max_time: float) -> dict[str, Any]:
    t0 = time.monotonic()
    out: dict[str, Any] = {"held_s": 0.0, "replies": [], "sent": 0, "end": ""}
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    except (TimeoutError, OSError) as e:
        out["end"] = f"connect failed: {type(e).__name__}"
        return out
    pending = b""
    try:
        while True:
            left = max_time - (time.monotonic() - t0)
            if left <= 0:
                out["end"] = "still open at max-time"
                break
            try:
                data = await asyncio.wait_for(reader.read(4096), min(interval, left))
            except TimeoutError:
                data = None
            if data == b"":
                out["end"] = "closed by the server"
                break
            if data:
                pending += data
                *lines, pending = pending.split(b"\r\n")
                out["replies"] += [line.decode("latin-1") for line in lines]
                continue
            writer.write(LINE[out["sent"] % len(LINE) : out["sent"] % len(LINE) + 1])
            await writer.drain()
            out["sent"] += 1
    except OSError as e:
        out["end"] = f"reset ({type(e).__name__})"
    finally:
        out["held_s"] = round(time.monotonic() - t0, 3)
        writer.close()
    return out


async def run(host: str, port: int, connections: int, interval: float, max_time: float) -> dict[str, Any]:
    conns = await asyncio.gather(*(_drip(host, port, interval, max_time) for _ in range(connections)))
    held = [c["held_s"] for c in conns]
    return {
        "scenario": "slowloris",
        "target": f"{host}:{port}",
        "connections": connections,
        "interval_s": interval,
        "max_time_s": max_time,
        "held_s": {"max": max(held), "median": statistics.median(held), "min": min(held)},
        "closed_by_server": sum(c["end"] == "closed by the server" for c in conns),
        "still_open_at_max_time": sum(c["end"] == "still open at max-time" for c in conns),
        "per_connection": conns,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench.faults.slowloris", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=2525)
    ap.add_argument("--connections", type=int, default=20, help=f"at most {MAX_CONNECTIONS}")
    ap.add_argument("--interval", type=float, default=2.0, help="seconds between two dripped octets")
    ap.add_argument("--max-time", type=float, default=120.0, help=f"per connection, at most {MAX_TIME:.0f}")
    args = ap.parse_args(argv)
    bounded = 1 <= args.connections <= MAX_CONNECTIONS and 0 < args.max_time <= MAX_TIME
    if not bounded or args.interval <= 0:
        ap.error("connections, interval or max-time out of bounds")
    report = asyncio.run(run(args.host, args.port, args.connections, args.interval, args.max_time))
    json.dump(report, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
