# SPDX-License-Identifier: MIT
"""Mail-loop fault scenario: one message sent into a loop; how many hops before it bounces?

    .venv/bin/python bench/faults/mail_loop.py [--deadline 30] [--json OUT]

Two loops, each with real ``fastmta serve`` processes on loopback (bench peers:
spool in a temp dir, DNS at a dead port) and one null-sender message, so no bounce
message joins the loop:

* ``route_to_self``: a ``[[route]]`` whose next hop is the server's own listener.
  Expected: no hop at all (the next hop is recognised as ourselves), a 5.4.6 bounce
  "loops back to myself" within a second or so.
* ``ping_pong``: two servers routing to each other, which neither can see as a loop.
  Expected: ``max_hops`` relays (the default 50) after the client's hop, then the
  receiver refuses 554 5.4.6 and the sender bounces it.

Each scenario is bounded by ``--deadline`` seconds; a loop still going then is reported
with the hops made so far and ``bounced: false``. Prints one JSON object; exit status
0 when every scenario bounced with 5.4.6 within its hop budget, else 1.
"""

from __future__ import annotations

import argparse
import json
import smtplib
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.peers import Fastmta, stop_on_sigterm  # noqa: E402

RCPT = "bob@loop.fastmta.test"
MAX_HOPS = 50  # the embedded default of [limits] max_hops


def _events(peer: Fastmta) -> list[dict[str, Any]]:
    path = peer.workdir / "delivery.log"
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def _loop(peers: list[Fastmta], deadline: float) -> dict[str, Any]:
    """Send one message to the first peer; watch every peer's log until a bounce or the deadline."""
    for peer in peers:
        peer.start()
    t0 = time.monotonic()
    with smtplib.SMTP("127.0.0.1", peers[0].port, timeout=30) as c:
        c.sendmail("", [RCPT], b"From: loop@src.fastmta.test\r\nSubject: loop\r\n\r\nround and round\r\n")
    bounced: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    while time.monotonic() - t0 < deadline and not bounced:
        time.sleep(0.05)
        events = [e for peer in peers for e in _events(peer)]
        bounced = [e for e in events if e["event"] == "bounced"]
    elapsed = time.monotonic() - t0
    hops = sum(1 for e in events if e["event"] == "received" and e["rcpt"] == RCPT)
    result: dict[str, Any] = {"hops": hops, "bounced": bool(bounced), "seconds": round(elapsed, 3)}
    if bounced:
        b = bounced[0]
        result.update(code=b["code"], enhanced=b["enhanced"], response=b["response"],
                      bounce_class=b.get("bounce_class"))  # fmt: skip
    return result


def route_to_self(deadline: float) -> dict[str, Any]:
    peer = Fastmta(hold=False, metrics=False, name="loop-self")
    peer.relay_to = peer.address
    try:
        return _loop([peer], deadline)
    finally:
        peer.stop()


def ping_pong(deadline: float) -> dict[str, Any]:
    a = Fastmta(hold=False, metrics=False, name="loop-a")
    b = Fastmta(hold=False, metrics=False, name="loop-b")
    a.relay_to, b.relay_to = b.address, a.address
    try:
        return _loop([a, b], deadline)
    finally:
        a.stop()
        b.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--deadline", type=float, default=30.0, help="seconds per scenario")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)
    stop_on_sigterm()
    budgets = {"route_to_self": 1, "ping_pong": MAX_HOPS + 1}  # receptions a loop may cost
    out: dict[str, Any] = {}
    for name, scenario in (("route_to_self", route_to_self), ("ping_pong", ping_pong)):
        res = scenario(args.deadline)
        res["ok"] = res["bounced"] and res.get("enhanced") == "5.4.6" and res["hops"] <= budgets[name]
        out[name] = res
    out["ok"] = all(r["ok"] for r in out.values() if isinstance(r, dict))
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
