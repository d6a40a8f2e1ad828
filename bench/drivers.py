# SPDX-License-Identifier: MIT
"""The load drivers of the benchmarks, each run as its own bounded process.

``smtp-source`` (Postfix's C client: throughput only, no pipelining, one message
per connection unless ``-d``) and ``fastmta load`` (throughput plus client-side
latency percentiles) for SMTP; ApacheBench ``ab`` (C, keep-alive) for the HTTP
API, the like of ``smtp-source``. Each gets a message count and a wall-clock
timeout; a run that hits the timeout is killed by its own pid and reported as
failed.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.peers import PYTHON, ROOT, die_with_parent, tool

SENDER = "bench@source.fastmta.test"
RECIPIENT = "sink@sink.fastmta.test"


@dataclass
class Result:
    driver: str
    ok: int = 0
    failed: int = 0
    elapsed: float = 0.0
    rate: float = 0.0  # accepted messages per second
    mb_s: float = 0.0
    p50_ms: float | None = None  # whole transaction, client side (fastmta load only)
    p99_ms: float | None = None
    connect_p99_ms: float | None = None
    client_cpu_us_per_msg: float | None = None  # the driver's own CPU cost (it shares the cores)
    errors: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def children_cpu() -> float:
    """CPU seconds of this process's reaped children (the load tools it ran)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _run(cmd: list[str], timeout: float) -> tuple[int, bytes, bytes, float, float]:
    """Run one driver process; on timeout kill exactly that process. Adds the driver's CPU seconds."""
    start, cpu0 = time.perf_counter(), children_cpu()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        preexec_fn=die_with_parent,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return -9, out, err + b"\ndriver timed out", time.perf_counter() - start, children_cpu() - cpu0
    return proc.returncode, out, err, time.perf_counter() - start, children_cpu() - cpu0


def smtp_source(address: str, count: int, connections: int, reuse: bool, size: int,
                timeout: float) -> Result:  # fmt: skip
    """``smtp-source -s N -m COUNT -l SIZE [-d]``; counts as accepted only if it exits cleanly."""
    cmd = [tool("smtp-source"), "-s", str(connections), "-m", str(count), "-l", str(size),
           "-f", SENDER, "-t", RECIPIENT, "-M", "source.fastmta.test"]  # fmt: skip
    if reuse:
        cmd.append("-d")
    rc, _, err, elapsed, cpu = _run([*cmd, address], timeout)
    res = Result("smtp-source", elapsed=elapsed, client_cpu_us_per_msg=round(cpu / count * 1e6, 1))
    if rc == 0 and b"fatal" not in err:
        res.ok = count
        res.rate = count / elapsed
        res.mb_s = count * size / elapsed / 1e6
    else:
        res.failed = count
        last = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {rc}"]
        res.errors = {last[0][:120]: 1}
    return res


def fastmta_load(address: str, count: int, connections: int, per_connection: int, size: int,
                 timeout: float, pipelining: bool = False, procs: int = 1) -> Result:  # fmt: skip
    """``fastmta load --json``: the generator measures its own elapsed time and latencies."""
    cmd = [PYTHON, "-m", "fastmta", "load", "--server", address, "-c", str(connections),
           "-m", str(per_connection), "-n", str(count), "--size", str(size), "--json", "-q",
           "--from", SENDER, "--to", RECIPIENT, "--procs", str(procs), "--timeout", "20s"]  # fmt: skip
    if pipelining:
        cmd.append("--pipelining")
    rc, out, err, elapsed, cpu = _run(cmd, timeout)
    res = Result("fastmta-load", elapsed=elapsed, client_cpu_us_per_msg=round(cpu / count * 1e6, 1))
    try:
        summary = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        res.failed = count
        res.errors = {(err.decode(errors="replace").strip().splitlines() or [f"exit {rc}"])[-1][:120]: 1}
        return res
    res.ok, res.failed, res.elapsed = summary["ok"], summary["failed"], summary["elapsed_s"]
    res.rate, res.mb_s = summary["msgs_per_s"], summary["mb_per_s"]
    res.p50_ms = summary["latency_ms"]["txn"]["p50"]
    res.p99_ms = summary["latency_ms"]["txn"]["p99"]
    res.connect_p99_ms = summary["latency_ms"]["connect"]["p99"]
    res.errors = summary["errors"]
    if summary.get("ok"):  # its own CPU during the run, without interpreter start-up
        res.client_cpu_us_per_msg = round(summary["cpu_s"] / summary["ok"] * 1e6, 1)
    return res


def http_post(url: str, body: str, count: int, connections: int, headers: dict[str, str],
              timeout: float) -> Result:  # fmt: skip
    """``ab -k`` (ApacheBench, C): ``count`` POSTs of the file ``body`` on ``connections``
    keep-alive connections; a request counts as ok only with a 2xx answer."""
    cmd = [tool("ab"), "-q", "-k", "-n", str(count), "-c", str(connections), "-s", str(int(timeout)),
           "-p", body, "-T", "application/json"]  # fmt: skip
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    rc, out, err, elapsed, cpu = _run([*cmd, url], timeout)
    res = Result("ab", elapsed=elapsed, client_cpu_us_per_msg=round(cpu / count * 1e6, 1))
    text = out.decode(errors="replace")
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def number(name: str) -> int:
        return int(fields.get(name, "0").split()[0] or 0)

    bad = number("Failed requests") + number("Non-2xx responses")
    res.ok = max(0, number("Complete requests") - bad) if rc == 0 else 0
    res.failed = count - res.ok
    res.rate = res.ok / elapsed if elapsed else 0.0
    if res.failed:
        res.errors = {
            (err.decode(errors="replace").strip().splitlines() or [f"{bad} bad answers"])[-1][:120]: 1
        }
    return res
