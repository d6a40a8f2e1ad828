# SPDX-License-Identifier: MIT
"""Spool benchmark: durable puts/s under a busy loop, and recovery of a big queue.

    .venv/bin/python bench/spool.py [--quick] [--json OUT] [--dir /tmp/...]

1. Durable 4 KiB puts per second with 1, 50 and 500 concurrent producers on the
   event loop while a "busy" task keeps the loop doing other Python work (as SMTP
   sessions do: py-lmdb must win the GIL back after every call). Reports put latency and the commit
   batch size distribution.
2. In the same run, the classic design for comparison: one file per message,
   written, fsync'd and renamed into place by a thread pool, same producers, same
   busy loop.
3. A spool holding N (1,000,000; --quick 100,000) queued 4 KiB messages: time to
   open and recover it in a fresh process, that process's peak RSS, and bytes of
   RSS and disk per queued message.

Load loops are bounded in time and count. Numbers on a shared machine are noisy:
compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fastmta.config import SpoolConfig  # noqa: E402
from fastmta.spool import Envelope, Recipient, Spool, new_id, records  # noqa: E402
from fastmta.spool.store import Store, body_items, sched_key  # noqa: E402

BODY = (b"Subject: bench\r\n\r\n" + b"x" * 74 + b"\r\n") * 44  # ~4 KiB
BODY = BODY[:4096]


def envelope() -> Envelope:
    return Envelope("", "sender@bench.test", [Recipient("rcpt@dest.test")], client_ip="127.0.0.1",
                    helo="client.test", listener="mx")  # fmt: skip


async def busy(stop: asyncio.Event, slice_s: float, counter: list[int]) -> None:
    """Pure-Python work on the loop thread, yielding between slices (like parsing sessions)."""
    while not stop.is_set():
        end = time.perf_counter() + slice_s
        n = 0
        while time.perf_counter() < end:
            n += sum(range(50))
        counter[0] += 1
        await asyncio.sleep(0)


def pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


async def run_producers(
    put: Any, producers: int, seconds: float, max_puts: int, busy_slice: float
) -> dict[str, Any]:
    """``producers`` tasks calling ``await put()`` until time or count runs out.

    Puts still in flight a grace period past the deadline are abandoned, not awaited:
    a thread-pool put can starve for a minute behind a loop that keeps taking the GIL
    back (one file put once took 84 s here), and the run must stay bounded in time.
    """
    stop = asyncio.Event()
    ticks = [0]
    busy_task = asyncio.create_task(busy(stop, busy_slice, ticks)) if busy_slice > 0 else None
    latencies: list[float] = []
    done = [0]
    deadline = time.perf_counter() + seconds

    async def producer() -> None:
        while time.perf_counter() < deadline and done[0] < max_puts:
            t0 = time.perf_counter()
            await put()
            latencies.append(time.perf_counter() - t0)
            done[0] += 1

    t0 = time.perf_counter()
    tasks = [asyncio.create_task(producer()) for _ in range(producers)]
    _, late = await asyncio.wait(tasks, timeout=seconds + max(1.0, seconds))
    for task in late:
        task.cancel()
    await asyncio.gather(*late, return_exceptions=True)
    elapsed = time.perf_counter() - t0
    stop.set()
    if busy_task:
        await busy_task
    return {
        "producers": producers, "puts": done[0], "seconds": round(elapsed, 3),
        "puts_per_s": round(done[0] / elapsed, 1), "abandoned_in_flight": len(late),
        "latency_ms": {"p50": round(pct(latencies, 50) * 1e3, 2), "p99": round(pct(latencies, 99) * 1e3, 2)},
        "busy_slices_per_s": round(ticks[0] / elapsed, 1),
    }  # fmt: skip


async def bench_spool(path: str, producers: int, seconds: float, max_puts: int,
                      busy_slice: float) -> dict[str, Any]:  # fmt: skip
    spool = Spool.open(SpoolConfig(path=path, map_size=1024**3, max_map_size=64 * 1024**3))
    await spool.start()
    batches: list[int] = []
    on_batch = spool._on_batch  # the bench peeks at batch sizes; production reads the histogram

    def counting(batch: list[Any], results: list[Any]) -> None:
        batches.append(len(batch))
        on_batch(batch, results)

    assert spool._committer is not None
    spool._committer.on_batch = counting
    res = await run_producers(lambda: spool.put(envelope(), BODY), producers, seconds, max_puts, busy_slice)
    await spool.aclose()
    edges = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
    res["batch_size"] = {
        "commits": len(batches), "mean": round(statistics.fmean(batches), 1) if batches else 0,
        "p50": pct(batches, 50), "p90": pct(batches, 90), "p99": pct(batches, 99),
        "max": max(batches, default=0),
        "histogram_le": {str(b): sum(1 for x in batches if b // 2 < x <= b) for b in edges},
    }  # fmt: skip
    return res


def write_queue_file(directory: str, msg_id: str, data: bytes) -> None:
    """The classic queue file: write to a temp name, fsync, rename into place (Postfix style)."""
    tmp = os.path.join(directory, "tmp." + msg_id)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, os.path.join(directory, msg_id))


async def bench_files(
    path: str, producers: int, seconds: float, max_puts: int, busy_slice: float, threads: int
) -> dict[str, Any]:
    os.makedirs(path, mode=0o700, exist_ok=True)
    loop = asyncio.get_running_loop()
    pool = concurrent.futures.ThreadPoolExecutor(threads)

    def put() -> Any:
        env = envelope()
        env.id = new_id()
        return loop.run_in_executor(pool, write_queue_file, path, env.id, records.encode(env) + BODY)

    res = await run_producers(put, producers, seconds, max_puts, busy_slice)
    pool.shutdown(wait=False, cancel_futures=True)  # an abandoned put finishes on its own
    res["threads"] = threads
    return res


def fill(path: str, count: int) -> dict[str, Any]:
    """Write ``count`` queued 4 KiB messages quickly (big unsynced txns, one sync at the end)."""
    t0 = time.perf_counter()
    store = Store(path, 1024**3, 1024**4, sync=False)
    now = time.time()
    step = 20000
    for start in range(0, count, step):
        envs, bodies, sched = [], [], []
        for i in range(start, min(count, start + step)):
            env = envelope()
            env.id = new_id()
            env.arrived = env.next_attempt = now + i * 1e-3
            env.size = len(BODY)
            id_b = env.id.encode()
            envs.append((id_b, records.encode(env)))
            bodies.extend(body_items(id_b, BODY))
            sched.append((sched_key(env.next_attempt, id_b), b""))
        while True:
            try:
                with store.write() as txn:
                    store.put_many(txn, envs, bodies, sched)
                break
            except Exception as e:  # MapFullError: grow and retry the chunk
                if "MDB_MAP_FULL" not in str(e) and type(e).__name__ != "MapFullError":
                    raise
                store.grow(64 * 1024**2)
    store.env.sync(True)
    used = store.high_water()
    store.close()
    return {"messages": count, "fill_seconds": round(time.perf_counter() - t0, 1),
            "disk_bytes": used, "disk_bytes_per_message": round(used / count)}  # fmt: skip


def proc_status(field: str) -> int:
    """A /proc/self/status size in bytes (VmHWM = peak RSS of this process image: unlike
    ru_maxrss it does not inherit the parent's peak across fork+exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def recover_child(path: str) -> None:
    """Child process: open the spool (recovery scan), report time and peak RSS as JSON."""
    rss0 = proc_status("VmRSS")
    t0 = time.perf_counter()
    spool = Spool.open(SpoolConfig(path=path, map_size=1024**3, max_map_size=1024**4))
    first = spool.due(time.time() + 1e9, 1000)
    elapsed = time.perf_counter() - t0
    rss = proc_status("VmHWM")
    print(json.dumps({"recover_seconds": round(elapsed, 2), "messages": spool.recovery.messages,
                      "quarantined": spool.recovery.quarantined, "first_due_batch": len(first),
                      "peak_rss_bytes": rss, "rss_before_bytes": rss0}))  # fmt: skip
    spool.close()


def bench_recovery(base: str, count: int) -> dict[str, Any]:
    path = os.path.join(base, "recovery-spool")
    try:
        filled = fill(path, count)
        out = subprocess.run([sys.executable, __file__, "--recover-child", path], capture_output=True,
                             text=True, check=True, timeout=600)  # fmt: skip
        res = json.loads(out.stdout)
        res.update(filled)
        res["peak_rss_mib"] = round(res["peak_rss_bytes"] / 1024**2, 1)
        res["rss_bytes_per_message"] = round((res["peak_rss_bytes"] - res["rss_before_bytes"]) / count, 1)
        return res
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def bench_puts(
    base: str, counts: list[int], seconds: float, busy_slice: float, threads: int
) -> list[dict[str, Any]]:
    rows = []
    for n in counts:
        spool_dir = tempfile.mkdtemp(prefix="spool-", dir=base)
        files_dir = tempfile.mkdtemp(prefix="files-", dir=base)
        try:
            lm = await bench_spool(spool_dir, n, seconds, 200_000, busy_slice)
            fl = await bench_files(files_dir, n, seconds, 200_000, busy_slice, threads)
        finally:
            shutil.rmtree(spool_dir, ignore_errors=True)
            shutil.rmtree(files_dir, ignore_errors=True)
        # No ratio against a baseline that finished no put in the window: it would be infinite.
        ratio = round(lm["puts_per_s"] / fl["puts_per_s"], 1) if fl["puts"] else None
        rows.append({"producers": n, "lmdb": lm, "files": fl, "ratio": ratio})
        bs = lm["batch_size"]
        shown = f"{ratio}x" if ratio else "- (no file put finished)"
        print(f"{n:>4} producers: lmdb {lm['puts_per_s']:>9.1f}/s (batch p50 {bs['p50']}, max {bs['max']})"
              f"   files {fl['puts_per_s']:>8.1f}/s   ratio {shown}", file=sys.stderr)  # fmt: skip
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short runs, 100,000-message recovery")
    ap.add_argument("--json", metavar="OUT", help="write the JSON result here (default: stdout)")
    ap.add_argument("--dir", default="/tmp", help="where the temporary spools go (needs ~4.5 GiB)")
    ap.add_argument("--producers", default="1,50,500")
    ap.add_argument("--seconds", type=float, default=None, help="per measurement")
    ap.add_argument("--busy-slice", type=float, default=0.002, help="seconds of Python work per loop slice")
    ap.add_argument("--file-threads", type=int, default=64)
    ap.add_argument("--recovery-count", type=int, default=None)
    ap.add_argument("--skip-recovery", action="store_true")
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    ap.add_argument("--switchinterval", type=float, default=None, help="sys.setswitchinterval for the run")
    ap.add_argument("--recover-child", metavar="PATH", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.switchinterval:
        sys.setswitchinterval(args.switchinterval)
    if args.recover_child:
        recover_child(args.recover_child)
        return 0
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    count = args.recovery_count or (100_000 if args.quick else 1_000_000)
    base = tempfile.mkdtemp(prefix="fastmta-bench-spool-", dir=args.dir)
    if args.loop == "uvloop":
        import uvloop

        runner: Any = uvloop.run
    else:
        runner = asyncio.run
    try:
        result: dict[str, Any] = {
            "bench": "spool", "quick": args.quick, "loop": args.loop, "busy_slice_s": args.busy_slice,
            "switchinterval_s": sys.getswitchinterval(), "message_bytes": len(BODY), "cpus": os.cpu_count(),
            "load_average": os.getloadavg(),
        }  # fmt: skip
        counts = [int(x) for x in args.producers.split(",") if x]
        result["puts"] = runner(bench_puts(base, counts, seconds, args.busy_slice, args.file_threads))
        if not args.skip_recovery:
            result["recovery"] = bench_recovery(base, count)
            print(f"recovery of {count}: {result['recovery']['recover_seconds']} s, "
                  f"peak RSS {result['recovery']['peak_rss_mib']} MiB", file=sys.stderr)  # fmt: skip
    finally:
        shutil.rmtree(base, ignore_errors=True)
    text = json.dumps(result, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
