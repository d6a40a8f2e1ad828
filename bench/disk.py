# SPDX-License-Identifier: MIT
"""The disk's flush latency: the floor under any durable commit on this machine.

An LMDB commit makes two ordered flushes: ``fdatasync`` of the data pages, then the
meta page written through an ``O_DSYNC`` descriptor. This measures both with plain
system calls on a file that is already allocated and written (as LMDB's file is in
steady state), one 4 KiB page each time, so no LMDB overhead is in the numbers. At
one connection each message waits for its own commit, so no MTA that keeps LMDB's
guarantee can answer faster than the bare protocol plus this floor.

A real commit writes more than one page, and pages scattered over the file cost
more to flush than one: ``spool_commit_floor_us`` times the same two flushes after
``SPOOL_RUNS`` single-page writes at distinct random places, the shape of a
one-message commit of fastmta's spool (its envelope, body and schedule trees,
their parents and LMDB's free list: ``strace`` counts 8 write runs of 9 pages).

    .venv/bin/python bench/disk.py [DIR]
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import tempfile
import time
from typing import Any

PAGE = 4096
_FILE_PAGES = 4096  # 16 MiB written before timing: overwrites, as in a spool in steady state
SPOOL_RUNS = 8


def flush_latency(directory: str, samples: int = 200) -> dict[str, Any]:
    """Median µs of a one-page ``pwrite`` + ``fdatasync``, of a 120-byte ``O_DSYNC`` write,
    and of both after ``SPOOL_RUNS`` scattered page writes instead of one."""
    path = os.path.join(directory, f"flush-probe-{os.getpid()}")
    data = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.pwrite(data, os.urandom(PAGE) * _FILE_PAGES, 0)
        os.fsync(data)
        meta = os.open(path, os.O_RDWR | os.O_DSYNC)
        try:
            page, rng = os.urandom(PAGE), random.Random(7)
            data_us, meta_us, spool_us = [], [], []
            for i in range(2 * samples):  # one-page and spool-shaped commits, interleaved
                runs = 1 if i % 2 == 0 else SPOOL_RUNS
                t0 = time.perf_counter()
                for n in rng.sample(range(_FILE_PAGES), runs):
                    os.pwrite(data, page, n * PAGE)
                os.fdatasync(data)
                t1 = time.perf_counter()
                os.pwrite(meta, page[:120], 32)
                t2 = time.perf_counter()
                if runs == 1:
                    data_us.append((t1 - t0) * 1e6)
                    meta_us.append((t2 - t1) * 1e6)
                else:
                    spool_us.append((t2 - t0) * 1e6)
        finally:
            os.close(meta)
    finally:
        os.close(data)
        os.unlink(path)
    data_med, meta_med = statistics.median(data_us), statistics.median(meta_us)
    return {
        "samples": samples,
        "data_page_fdatasync_us": round(data_med, 1),
        "meta_dsync_write_us": round(meta_med, 1),
        "commit_floor_us": round(data_med + meta_med, 1),
        "spool_commit_floor_us": round(statistics.median(spool_us), 1),
    }


def combine(probes: list[dict[str, Any]]) -> dict[str, Any]:
    """Several probes of one run as one: the median of each time, every sample counted."""
    out: dict[str, Any] = {"samples": sum(p["samples"] for p in probes), "probes": len(probes)}
    for key in probes[0]:
        if key.endswith("_us"):
            out[key] = round(statistics.median(p[key] for p in probes), 1)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    with tempfile.TemporaryDirectory(dir=args[0] if args else None) as d:
        print(json.dumps(flush_latency(d)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
