# SPDX-License-Identifier: MIT
"""Where fastmta's accept CPU goes: py-spy samples of a loaded server, by area.

    .venv/bin/python bench/profile.py [--quick] [--seconds 3] [--root TREE] [--json OUT]

``fastmta serve`` (delivery held) takes ``fastmta load`` for a while; ``py-spy
record --native --subprocesses`` samples the server and its spool writer process.
Each sample of the server process is charged to the first area found walking
from the leaf frame towards the root: parser (Cython, native frames), session,
protocol glue, spool client, metrics and log, event loop; samples waiting in
epoll are idle and left out, and the share spent inside syscalls is reported
beside the areas. Shares times the server's CPU µs per message (from /proc)
give µs per message per area. py-spy pauses the process
to take native stacks, so throughput while profiling is lower than in accept.py.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import peers, report  # noqa: E402

PY_SPY = str(Path(sys.executable).with_name("py-spy"))
SCENARIOS = {  # name → (size, connections, messages per connection)
    "4k-50c-1m": (4096, 50, 1),
    "4k-50c-100m": (4096, 50, 100),
    "100k-50c-1m": (102400, 50, 1),
}
# (area, substrings of a frame's file); first match walking from the leaf wins.
AREAS = [
    ("parser", ("_parser",)),
    ("session", ("fastmta/smtp/session.py", "fastmta/smtp/commands.py", "fastmta/smtp/replies.py",
                 "fastmta/smtp/policy.py", "fastmta/smtp/auth.py")),
    ("protocol", ("fastmta/smtp/protocol.py", "fastmta/smtp/_core", "fastmta/smtp/listener.py",
                  "fastmta/smtp/tls.py", "fastmta/node/server.py")),
    ("spool", ("fastmta/spool/", "lmdb")),
    ("metrics+log", ("fastmta/metrics.py", "prometheus_client", "fastmta/deliverylog.py")),
    ("scheduler+delivery", ("fastmta/scheduler/", "fastmta/delivery/")),
]  # fmt: skip
SYSCALLS = {"send", "recv", "write", "read", "writev", "readv", "sendmsg", "recvmsg", "fsync", "fdatasync",
            "accept4", "close", "shutdown", "__libc_send", "__libc_recv", "__write", "__read"}  # fmt: skip
IDLE = {"epoll_wait", "epoll_pwait", "poll", "select", "pselect", "futex_wait", "pthread_cond_wait",
        "pthread_cond_timedwait", "sem_wait", "sem_timedwait", "nanosleep", "clock_nanosleep"}  # fmt: skip


def parse_frame(frame: str) -> tuple[str, str]:
    """``"func (file:line)"`` → (func, file)."""
    func, _, rest = frame.rpartition(" (")
    return (func or frame), rest.rstrip(")").rsplit(":", 1)[0]


def classify(frames: list[str]) -> tuple[str, bool]:
    """(area, leaf is a syscall) for one sample, frames from root to leaf; area "idle" for waits."""
    func, file = parse_frame(frames[-1])
    if "libc" in file and func in IDLE:
        return "idle", False
    syscall = "libc" in file and func in SYSCALLS
    for frame in reversed(frames):
        _, file = parse_frame(frame)
        for area, needles in AREAS:
            if any(n in file for n in needles):
                return area, syscall
    return "event loop+other", syscall


def analyse(raw: str, server_pid: int) -> dict[str, Any]:
    """Shares by area for the server process, the writer's sample count, and the top leaf functions."""
    areas: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    other_procs = idle = syscalls = 0
    for line in raw.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = stack.split(";")
        procs = [f for f in frames if f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("process ")]
        if not frames:
            continue
        area, syscall = classify(frames)
        if len(procs) > 1 or (procs and not procs[0].startswith(f"process {server_pid}:")):
            other_procs += 0 if area == "idle" else count  # the spool writer process (or another child)
            continue
        if area == "idle":
            idle += count
            continue
        areas[area] += count
        syscalls += count if syscall else 0
        func, file = parse_frame(frames[-1])
        leaves[f"{func} ({Path(file).name})"] += count
    total = sum(areas.values())
    return {
        "samples": total,
        "idle_samples": idle,
        "child_process_samples": other_procs,
        "syscall_share": round(syscalls / total, 3) if total else 0.0,
        "shares": {a: round(n / total, 3) for a, n in areas.most_common()} if total else {},
        "top_leaves": [[name, round(n / total, 3)] for name, n in leaves.most_common(12)] if total else [],
    }


def profile_one(peer: peers.Fastmta, name: str, seconds: float, rate: int) -> dict[str, Any]:
    size, conns, per = SCENARIOS[name]
    load_cmd = [
        peers.PYTHON,
        "-m",
        "fastmta",
        "load",
        "--server",
        peer.address,
        "-c",
        str(conns),
        "-m",
        str(per),
        "--size",
        str(size),
        "--duration",
        f"{seconds + 2:.1f}",
        "-q",
        "--json",
    ]
    out = Path(tempfile.mkstemp(suffix=".txt")[1])
    cpu0 = peer.cpu()
    load = subprocess.Popen(load_cmd, stdout=subprocess.PIPE, cwd=ROOT, preexec_fn=peers.die_with_parent)
    try:
        time.sleep(1.0)
        spy = subprocess.run([PY_SPY, "record", "--pid", str(peer.pid), "--subprocesses", "--native",
                              "--format", "raw", "--rate", str(rate), "--duration", str(int(seconds)),
                              "-o", str(out)], capture_output=True, timeout=seconds + 60)  # fmt: skip
        summary = json.loads(load.communicate(timeout=seconds + 60)[0].decode().strip().splitlines()[-1])
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    cpu = peer.cpu() - cpu0
    try:
        raw = out.read_text()
    finally:
        out.unlink(missing_ok=True)
    result = analyse(raw, peer.pid)
    ok = summary["ok"]
    result.update(
        msgs_per_s_while_profiled=summary["msgs_per_s"],
        cpu_us_per_msg=round(cpu / ok * 1e6, 1) if ok else None,
        py_spy_error=spy.stderr.decode(errors="replace")[-300:] if spy.returncode else None,
    )
    if result["cpu_us_per_msg"] and result["shares"]:
        # The writer process's CPU is in the tree total; charge the main process's share of it.
        main_frac = result["samples"] / max(1, result["samples"] + result["child_process_samples"])
        result["us_per_msg_by_area"] = {
            a: round(sh * result["cpu_us_per_msg"] * main_frac, 1) for a, sh in result["shares"].items()
        }
        result["us_per_msg_spool_writer_process"] = round(result["cpu_us_per_msg"] * (1 - main_frac), 1)
    return result


def run(seconds: float, rate: int, names: list[str], log: Any, root: Path | None = None) -> dict[str, Any]:
    peer = peers.Fastmta(hold=True, name="fastmta-profile", root=root).start()
    out: dict[str, Any] = {"bench": "profile", "seconds": seconds, "rate_hz": rate, "scenarios": {}}
    try:
        for name in names:
            res = profile_one(peer, name, seconds, rate)
            out["scenarios"][name] = res
            log(f"{name}: {res.get('us_per_msg_by_area') or res}")
    finally:
        with contextlib.suppress(Exception):
            peer.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 s per scenario")
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--rate", type=int, default=200, help="samples per second")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--json", nargs="?", const="-", metavar="OUT", help="write JSON to OUT (- = stdout)")
    ap.add_argument("--root", type=Path, metavar="TREE", help="profile the checkout at TREE (its own .venv)")
    args = ap.parse_args(argv)
    peers.stop_on_sigterm()
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    result = run(seconds, args.rate, args.scenarios.split(","), log, args.root)
    report.write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
