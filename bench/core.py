# SPDX-License-Identifier: MIT
"""CPU per message of the receive path alone: protocol shell, core, parser and session.

    .venv/bin/python bench/core.py [--messages 3000] [--reps 7] [--root TREE ...] [--callgrind] [--json OUT]

No sockets, no spool, no loop: ``SmtpProtocol`` gets a transport that only counts
writes and a store whose commit resolves at once, so what is timed (process CPU,
best of ``--reps``) is the Python and Cython work per message, without the kernel,
the event loop or the spool writer. That part is steady even on a busy shared
machine, unlike end-to-end rates, so an A/B of two checkouts (``--root`` per tree,
each run with its own ``.venv``, in alternating order) shows small changes.
Scenarios: a new connection per 4 KiB message (EHLO … QUIT), reused connections,
and a new connection per 100 KiB message; each read is one command or the body.
``FASTMTA_PURE_PYTHON=1`` times the pure-Python twins.

``--callgrind`` counts instructions instead (valgrind, about a minute per tree and
scenario): (Ir at 150 messages − Ir at 50) / 100, exact and untouched by other
load, where process CPU on a busy 2-core VM still moves by ±15 %.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class _Transport:
    __slots__ = ("writes",)

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def close(self) -> None:
        pass

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else None


class _Committed:
    """A resolved commit, for a tree whose store hands back a future (an A/B across that change)."""

    def add_done_callback(self, cb: Any) -> None:
        cb(self)

    def exception(self) -> None:
        return None


class _Store:
    """A commit that succeeds at once: ``done`` runs before ``put`` returns."""

    def put(self, msg_id: str, txn: Any, head: bytes, body: bytes, done: Any = None) -> _Committed | None:
        if done is None:
            return _Committed()
        done(None)
        return None


class _Hub:
    def __init__(self) -> None:
        from fastmta.smtp.policy import AuthFailures, ConnectionLimits

        self.loop = None
        self.store = _Store()
        self.limits = ConnectionLimits(10**9, 10**9)
        self.auth_failures = AuthFailures(3)
        self.connections: set[Any] = set()
        self.draining = False
        self.now = 0.0
        self.auth_executor = None

    def new_id(self) -> str:
        return "0123456789ABCDEF"

    def unhealthy(self) -> None:
        return None


def _body(size: int) -> bytes:
    line = b"x" * 76 + b"\r\n"
    return b"Subject: bench\r\n\r\n" + line * (size // len(line)) + b".\r\n"


def measure(messages: int, reps: int, only: str = "") -> dict[str, float]:
    """µs of process CPU per message, best of ``reps``, for each scenario (in this process)."""
    from fastmta.config import from_dict
    from fastmta.smtp.auth import Users
    from fastmta.smtp.listener import ListenerSettings
    from fastmta.smtp.policy import Policy
    from fastmta.smtp.protocol import SmtpProtocol

    cfg = from_dict({"hostname": "mx.test", "metrics": {"address": ""}})
    hub = _Hub()
    settings = ListenerSettings(cfg, cfg.listeners[0], hub, Policy(cfg), Users(), None)  # type: ignore[arg-type]
    settings.pregreet_check = False
    tx = [b"MAIL FROM:<a@example.com>\r\n", b"RCPT TO:<b@example.com>\r\n", b"DATA\r\n"]

    def new_connection(body: bytes) -> float:
        reads = [b"EHLO client.test\r\n", *tx, body, b"QUIT\r\n"]
        t0 = time.process_time()
        for _ in range(messages):
            p = SmtpProtocol(hub, settings)  # type: ignore[arg-type]
            p.connection_made(_Transport())
            for r in reads:
                p.data_received(r)
            p.connection_lost(None)
        return time.process_time() - t0

    def reused(body: bytes) -> float:
        reads = [*tx, body]
        p = SmtpProtocol(hub, settings)  # type: ignore[arg-type]
        t = _Transport()
        p.connection_made(t)
        p.data_received(b"EHLO client.test\r\n")
        t0 = time.process_time()
        for _ in range(messages):
            for r in reads:
                p.data_received(r)
        spent = time.process_time() - t0
        assert t.writes == 2 + 4 * messages, "every command and body must be answered"
        return spent

    runs = {"4k-new": (new_connection, _body(4096)), "4k-reused": (reused, _body(4096)),
            "100k-new": (new_connection, _body(102400))}  # fmt: skip
    return {
        name: round(min(f(b) for _ in range(reps)) / messages * 1e6, 2)
        for name, (f, b) in runs.items()
        if name == only or not only
    }


SCENARIOS = ("4k-new", "4k-reused", "100k-new")


def instructions(tree: Path, scenario: str, low: int = 50, high: int = 150) -> int:
    """Instructions per message of one scenario in ``tree``: two callgrind runs, differenced,
    so start-up and imports cancel out."""

    def total(messages: int) -> int:
        cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
               str(tree / ".venv" / "bin" / "python"), str(Path(__file__).resolve()), "--here",
               "--only", scenario, "--messages", str(messages), "--reps", "1"]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=str(tree))
        err = subprocess.run(cmd, capture_output=True, check=True, cwd=tree, env=env).stderr.decode()
        return int(err.rsplit("Collected : ", 1)[1].split()[0])

    return (total(high) - total(low)) // (high - low)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--root", type=Path, action="append", default=[], help="a checkout to time (repeatable)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds over the --root trees")
    ap.add_argument("--json", nargs="?", const="-", metavar="OUT")
    ap.add_argument("--only", default="", help="one scenario (4k-new, 4k-reused, 100k-new)")
    ap.add_argument("--callgrind", action="store_true", help="instructions per message (valgrind)")
    ap.add_argument("--here", action="store_true", help=argparse.SUPPRESS)  # one tree, in this process
    args = ap.parse_args(argv)
    if args.here or not args.root:
        result: dict[str, Any] = measure(args.messages, args.reps, args.only)
        print(json.dumps(result))
        return 0
    # Only the parent reads bench/: a child must import fastmta from its own tree alone.
    sys.path.insert(0, str(ROOT))
    from bench import report

    if args.callgrind:
        counted = {str(t): {sc: instructions(t, sc) for sc in SCENARIOS if sc == args.only or not args.only}
                   for t in args.root}  # fmt: skip
        report.write_json({"bench": "core", "instructions_per_msg": counted}, args.json)
        return 0
    trees: dict[str, list[dict[str, float]]] = {str(t): [] for t in args.root}
    for rnd in range(args.rounds):
        for tree in args.root if rnd % 2 == 0 else args.root[::-1]:
            cmd = [str(tree / ".venv" / "bin" / "python"), str(Path(__file__).resolve()), "--here",
                   "--messages", str(args.messages), "--reps", str(args.reps)]  # fmt: skip
            env = dict(os.environ, PYTHONPATH=str(tree))
            out = subprocess.run(cmd, capture_output=True, check=True, cwd=tree, env=env).stdout
            trees[str(tree)].append(json.loads(out.decode().strip().splitlines()[-1]))
            print(f"{tree}: {trees[str(tree)][-1]}", file=sys.stderr, flush=True)
    best = {t: {k: min(r[k] for r in rs) for k in rs[0]} for t, rs in trees.items()}
    result = {"bench": "core", "messages": args.messages, "reps": args.reps, "rounds": args.rounds,
              "pure_python": os.environ.get("FASTMTA_PURE_PYTHON") == "1", "us_per_msg": best}  # fmt: skip
    report.write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
