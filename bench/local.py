# SPDX-License-Identifier: MIT
"""Local delivery benchmark: Maildir and LMTP deliveries/s, sendmail injection latency.

    .venv/bin/python bench/local.py [--quick] [--json OUT] [--dir /tmp/...]

1. Maildir: LocalDeliverer delivering N 4 KiB one-recipient messages into 10
   mailboxes with 1, 8 and 32 deliveries in flight (every message fsync'd, renamed,
   directory fsync'd); in the same run the bare ``maildir_write`` loop on one thread
   (the floor: what the deliverer adds on top is the ratio).
2. LMTP: the same messages over one reused LMTP session to aiosmtpd's LMTP server
   (a pure-Python server: this mostly measures it), with 1 and 8 in flight.
3. ``fastmta sendmail`` per invocation (median of N runs): into the spool, and the
   bare interpreter start (``python -c pass``) for comparison.

Loops are bounded in count; numbers on a shared machine are noisy: compare the
ratios of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fastmta import config  # noqa: E402
from fastmta.delivery import Destination  # noqa: E402
from fastmta.delivery.local import LocalDeliverer, maildir_write  # noqa: E402
from fastmta.spool import admin  # noqa: E402
from fastmta.spool.records import Envelope, Recipient  # noqa: E402

BODY = ((b"Subject: bench\r\n\r\n" + b"x" * 74 + b"\r\n") * 44)[:4096]
LOCAL = Destination("local", "local.test")


class Bodies:
    def body(self, msg_id: str) -> bytes | None:
        return BODY


def make_cfg(workdir: Path, lmtp: str = "") -> config.Config:
    return config.from_dict({
        "hostname": "bench.local.test", "policy": {"local_domains": ["local.test"]},
        "local": {"maildir": str(workdir / "mail"), "lmtp": lmtp},
        "delivery": {"max_connections_per_destination": 32}, "metrics": {"address": ""},
    })  # fmt: skip


async def drive(d: LocalDeliverer, n: int, inflight: int) -> tuple[float, list[float]]:
    """Deliver n messages with ``inflight`` concurrent deliver() calls; (seconds, latencies)."""
    latencies: list[float] = []
    todo = iter(range(n))

    async def worker() -> None:
        for i in todo:
            env = Envelope(f"B{i}", "bench@x.test", [Recipient(f"user{i % 10}@local.test")])
            t = time.perf_counter()
            attempt = await d.deliver(LOCAL, env, [0])
            latencies.append(time.perf_counter() - t)
            assert type(attempt.outcomes[0]).__name__ == "Delivered", attempt.outcomes

    start = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(inflight))), 600)
    return time.perf_counter() - start, latencies


def summary(n: int, seconds: float, latencies: list[float]) -> dict[str, float]:
    lat = sorted(latencies)
    return {"per_s": round(n / seconds, 1), "p50_ms": round(lat[len(lat) // 2] * 1000, 2),
            "p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 2)}  # fmt: skip


def bench_maildir(workdir: Path, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    box = workdir / "floor"
    start = time.perf_counter()
    for _ in range(n):
        maildir_write(str(box), "h", [b"Return-Path: <a@b>\n", BODY])
    out["floor_maildir_write_per_s"] = round(n / (time.perf_counter() - start), 1)
    for inflight in (1, 8, 32):
        shutil.rmtree(workdir / "mail", ignore_errors=True)

        async def run(k: int = inflight) -> tuple[float, list[float]]:
            d = LocalDeliverer(make_cfg(workdir), Bodies())
            try:
                return await drive(d, n, k)
            finally:
                await d.close()

        out[f"inflight_{inflight}"] = summary(n, *asyncio.run(run()))
    return out


def bench_lmtp(workdir: Path, n: int) -> dict[str, Any]:
    from aiosmtpd.controller import Controller
    from aiosmtpd.lmtp import LMTP

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            return "\r\n".join("250 2.0.0 Ok" for _ in envelope.rcpt_tos)

    handler = Handler()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ctl = type("C", (Controller,), {"factory": lambda self: LMTP(handler, decode_data=False)})(
        handler, hostname="127.0.0.1", port=port
    )
    ctl.start()
    out: dict[str, Any] = {}
    try:
        for inflight in (1, 8):

            async def run(k: int = inflight) -> tuple[float, list[float]]:
                d = LocalDeliverer(make_cfg(workdir, f"127.0.0.1:{port}"), Bodies())
                try:
                    return await drive(d, n, k)
                finally:
                    await d.close()

            out[f"inflight_{inflight}"] = summary(n, *asyncio.run(run()))
    finally:
        ctl.stop()
    return out


def bench_sendmail(workdir: Path, runs: int) -> dict[str, Any]:
    cfg = workdir / "sm.toml"
    cfg.write_text(f'hostname = "bench.test"\n[spool]\npath = "{workdir / "spool"}"\nmap_size = "64MiB"\n'
                   '[metrics]\naddress = ""\n[dns]\nnameservers = ["127.0.0.1:9"]\n')  # fmt: skip
    admin.open_store(config.load(str(cfg)).spool).close()  # sendmail writes only into an existing spool
    msg = b"Subject: s\nTo: a@b.test\n\n" + BODY

    def timed(cmd: list[str], data: bytes) -> float:
        t = time.perf_counter()
        subprocess.run(cmd, input=data, check=True, capture_output=True, timeout=60, cwd=ROOT)
        return time.perf_counter() - t

    python = [sys.executable, "-c", "pass"]
    inject = [sys.executable, "-m", "fastmta", "sendmail", "--config", str(cfg), "-t"]
    bare = statistics.median(timed(python, b"") for _ in range(runs))
    spool = statistics.median(timed(inject, msg) for _ in range(runs))
    return {"python_start_ms": round(bare * 1000, 1), "sendmail_spool_ms": round(spool * 1000, 1),
            "sendmail_over_bare_ms": round((spool - bare) * 1000, 1)}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer messages (CI smoke run)")
    ap.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    ap.add_argument("--dir", help="work directory (default: a fresh temporary one)")
    args = ap.parse_args()
    n, runs = (300, 5) if args.quick else (2000, 15)
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="fastmta-bench-local-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        results = {"messages": n, "maildir": bench_maildir(workdir, n), "lmtp": bench_lmtp(workdir, n),
                   "sendmail": bench_sendmail(workdir, runs)}  # fmt: skip
    finally:
        if not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
