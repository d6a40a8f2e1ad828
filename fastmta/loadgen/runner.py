# SPDX-License-Identifier: MIT
"""A load run on uvloop, split over forked processes when one core is not enough."""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from fastmta.loadgen.client import run_async
from fastmta.loadgen.spec import LoadSpec
from fastmta.loadgen.stats import Stats


def _child(spec: LoadSpec, conn: Any, shared: Any, index: int) -> None:
    import uvloop

    os.setpgid(0, 0)  # the terminal's Ctrl-C goes to the parent, which forwards it once
    _die_with_parent()

    def publish(stats: Stats) -> None:
        shared[2 * index] = stats.ok
        shared[2 * index + 1] = stats.failed

    try:
        stats = uvloop.run(run_async(spec, publish))
        conn.send(stats)
    finally:
        conn.close()


def _die_with_parent() -> None:
    """A worker must not outlive the parent that would read its report (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run(spec: LoadSpec, procs: int = 1, progress: Callable[[int, int, float], None] | None = None) -> Stats:
    """Run the load on uvloop, split over ``procs`` processes; merged statistics.

    ``progress(ok, failed, elapsed)`` is called about twice a second.
    """
    import uvloop

    procs = max(1, min(procs, spec.connections))
    start = time.perf_counter()
    if procs == 1:
        cb = (lambda s: progress(s.ok, s.failed, time.perf_counter() - start)) if progress else None
        return uvloop.run(run_async(spec, cb))
    ctx = multiprocessing.get_context("fork")
    shared = ctx.Array("q", 2 * procs, lock=False)
    children = []
    for i, part in enumerate(_split(spec, procs)):
        parent_end, child_end = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_child, args=(part, child_end, shared, i), daemon=True)
        p.start()
        child_end.close()
        children.append((p, parent_end))
    total = Stats()
    pending = list(children)

    # Workers sit in their own process groups; Ctrl-C reaches the parent only, which passes
    # each one on exactly once: the workers wind down (or, the second time, hang up) and report.
    def forward(signum: int, frame: object) -> None:
        for p, _ in children:
            if p.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGINT)

    previous = signal.signal(signal.SIGINT, forward)
    try:
        _collect(pending, total, shared, progress, start)
    finally:
        signal.signal(signal.SIGINT, previous)
    total.elapsed = time.perf_counter() - start
    return total


def _collect(pending: list[Any], total: Stats, shared: Any,
             progress: Callable[[int, int, float], None] | None, start: float) -> None:  # fmt: skip
    """Merge each worker's statistics as it finishes; publish progress meanwhile."""
    while pending:
        for item in list(pending):
            p, pipe = item
            if pipe.poll(0.5 / len(pending)):
                with contextlib.suppress(EOFError):
                    total.merge(pipe.recv())
                pipe.close()
                p.join()
                pending.remove(item)
            elif not p.is_alive() and not pipe.poll(0):
                total.errors["loadgen-worker-died"] += 1
                pending.remove(item)
        if progress:
            progress(sum(shared[0::2]), sum(shared[1::2]), time.perf_counter() - start)


def _split(spec: LoadSpec, procs: int) -> list[LoadSpec]:
    """Share connections, count and rate among processes (remainders to the first ones)."""
    from dataclasses import replace

    parts = []
    for i in range(procs):
        conns = spec.connections // procs + (i < spec.connections % procs)
        count = None if spec.count is None else spec.count // procs + (i < spec.count % procs)
        parts.append(replace(spec, connections=conns, count=count, rate=spec.rate / procs))
    return parts


class Progress:
    """A progress line on stderr: rewritten in place on a tty, a plain line every 5 s otherwise."""

    def __init__(self, total: int | None, duration: float | None, stream: Any = None) -> None:
        self.total = total
        self.duration = duration
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.last_plain = 0.0

    def __call__(self, ok: int, failed: int, elapsed: float) -> None:
        if not self.tty and elapsed - self.last_plain < 5.0:
            return
        self.last_plain = elapsed
        done = ok + failed
        rate = ok / elapsed if elapsed > 0 else 0.0
        frac = None
        if self.total:
            frac = done / self.total
        if self.duration:
            frac = max(frac or 0.0, elapsed / self.duration)
        bar = ""
        if frac is not None:
            n = int(min(1.0, frac) * 30)
            bar = f"[{'#' * n}{'.' * (30 - n)}] {min(1.0, frac) * 100:5.1f}%  "
        text = f"{bar}{ok} ok  {failed} failed  {rate:,.0f} msg/s  {elapsed:.1f} s"
        self.stream.write(("\r" + text + "\x1b[K") if self.tty else text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
