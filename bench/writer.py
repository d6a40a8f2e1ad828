# SPDX-License-Identifier: MIT
"""The spool writer's answer time for one lone operation: what one connection waits for.

    .venv/bin/python bench/writer.py [--ops 400] [--rounds 4] [--root TREE ...] [--json OUT]

Each checkout's own writer process (``fastmta.spool.writer``, run by its ``.venv``
with ``PYTHONPATH`` at the tree) gets a socketpair and a fresh spool; one operation
at a time (the removal of an absent message: a real transaction that writes no page,
so no flush) is sent after a 2 ms pause, so the writer is idle as it is between the
messages of one SMTP connection, and timed until its acknowledgement. What is timed
is the writer's own path (its waits, its batching, the hand-offs), which the disk's
flush latency would otherwise hide. Medians per tree over alternating rounds;
``--root`` repeatable for an A/B.
"""

from __future__ import annotations

import argparse
import os
import pickle
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REQ, ACK = struct.Struct("<IIB"), struct.Struct("<I")  # the writer's frame and reply headers
OP = 2
PAUSE = 0.002
_MAIN = "import sys; from fastmta.spool.writer import main; sys.exit(main(sys.argv[1:]))"


def _exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise RuntimeError("the writer closed the socket")
        data += chunk
    return data


def _reply(sock: socket.socket) -> dict[str, Any]:
    """The next acknowledgement (or the start-up reply); an idle writer's room figures are skipped."""
    while True:
        (n,) = ACK.unpack(_exactly(sock, ACK.size))
        msg: dict[str, Any] = pickle.loads(_exactly(sock, n))
        if "seconds" in msg or "ready" in msg or "error" in msg:
            return msg


def round_trips(tree: Path, ops: int) -> list[float]:
    """µs from sending each lone operation to its acknowledgement, against ``tree``'s writer."""
    ours, theirs = socket.socketpair()
    with tempfile.TemporaryDirectory(prefix="fastmta-writer-bench-") as d:
        cmd = [str(tree / ".venv" / "bin" / "python"), "-c", _MAIN, "--fd", str(theirs.fileno()),
               "--path", str(Path(d) / "spool"), "--map-size", str(64 << 20), "--max-map-size", str(64 << 20),
               "--max-batch-bytes", str(8 << 20), "--commit-window", "0.002"]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=str(tree))
        proc = subprocess.Popen(cmd, pass_fds=[theirs.fileno()], cwd=tree, env=env)
        theirs.close()
        try:
            if not _reply(ours).get("ready"):
                raise RuntimeError(f"{tree}: the writer did not start")
            times = []
            for seq in range(1, ops + 1):
                time.sleep(PAUSE)
                payload = pickle.dumps(("remove", (b"%016d" % seq,)))
                t0 = time.perf_counter()
                ours.sendall(REQ.pack(len(payload), seq, OP) + payload)
                ack = _reply(ours)
                times.append((time.perf_counter() - t0) * 1e6)
                if [r[0] for r in ack["results"]] != [seq]:
                    raise RuntimeError(f"{tree}: operation {seq} acknowledged as {ack['results']}")
        finally:
            ours.shutdown(socket.SHUT_WR)  # EOF: the writer commits what it has and exits
            proc.wait(30)
            ours.close()
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=400, help="operations per tree and round")
    ap.add_argument("--rounds", type=int, default=4, help="alternating rounds over the --root trees")
    ap.add_argument("--root", type=Path, action="append", default=[], help="a checkout (repeatable)")
    ap.add_argument("--json", nargs="?", const="-", metavar="OUT")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from bench import report

    trees = args.root or [ROOT]
    medians: dict[str, list[float]] = {str(t): [] for t in trees}
    for rnd in range(args.rounds):
        for tree in trees if rnd % 2 == 0 else trees[::-1]:
            med = statistics.median(round_trips(tree, args.ops))
            medians[str(tree)].append(round(med, 1))
            print(f"round {rnd} {tree}: median {med:.1f} µs", file=sys.stderr, flush=True)
    per_tree = {t: {"median": statistics.median(m), "rounds": m} for t, m in medians.items()}
    result = {"bench": "writer", "ops": args.ops, "rounds": args.rounds}
    result["round_trip_us"] = per_tree
    report.write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
