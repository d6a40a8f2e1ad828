# SPDX-License-Identifier: MIT
"""Fault scenario shared by ``disk_full.py`` and ``map_ceiling.py``: fill, drain, refill.

A real ``fastmta serve`` (delivery held) takes messages until it answers
``452 4.3.1``; then delivery is switched on (SIGHUP) and the queue drains into
Postfix's ``smtp-sink``. A spool whose file kept its free pages must take mail
again once the queue is empty, and again after a restart. The result is a JSON-
ready dict; every wait is bounded, and both processes are stopped by their pid.
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import subprocess
import time
from pathlib import Path
from typing import Any

from bench import peers

PROBE_SECONDS = 15.0  # the writer measures its room at least once a second when idle


def message(n: int, size: int) -> bytes:
    line = b"x" * 76 + b"\r\n"
    head = f"From: a@src.test\r\nTo: b@dst.test\r\nSubject: fill {n}\r\n\r\n".encode()
    return head + line * (size // len(line))


def send(port: int, n: int, size: int, client: smtplib.SMTP | None = None) -> str:
    """One message: "ok", or the refusal ("452 4.3.1 …"), or the error's class."""
    try:
        if client is None:
            with smtplib.SMTP(peers.HOST, port, timeout=30) as c:
                c.sendmail("a@src.test", ["b@dst.test"], message(n, size))
        else:
            client.sendmail("a@src.test", ["b@dst.test"], message(n, size))
        return "ok"
    except smtplib.SMTPResponseException as e:
        return f"{e.smtp_code} {e.smtp_error.decode(errors='replace')}"
    except (OSError, smtplib.SMTPException) as e:
        return type(e).__name__


def fill(port: int, size: int, limit: int) -> tuple[int, str]:
    """Messages accepted until the first refusal, and that refusal ("" if none came)."""
    with smtplib.SMTP(peers.HOST, port, timeout=30) as c:
        for n in range(limit):
            reply = send(port, n, size, c)
            if reply != "ok":
                return n, reply
    return limit, ""


def probe(port: int, size: int, seconds: float = PROBE_SECONDS) -> dict[str, Any]:
    """Seconds until a new message is accepted (None: not within ``seconds``), and the
    refusals before it."""
    start = time.monotonic()
    refusals: dict[str, int] = {}
    while time.monotonic() - start < seconds:
        reply = send(port, -1, size)
        if reply == "ok":
            return {"seconds": round(time.monotonic() - start, 2), "refusals": refusals}
        refusals[reply] = refusals.get(reply, 0) + 1
        time.sleep(0.2)
    return {"seconds": None, "refusals": refusals}


def queue_stats(mta: peers.Fastmta) -> dict[str, Any]:
    cmd = [peers.PYTHON, "-m", "fastmta", "queue", "stats", "--json", "--config", str(mta.config)]
    r = subprocess.run(cmd, capture_output=True, timeout=120, cwd=peers.ROOT, env=mta.env())
    stats: dict[str, Any] = json.loads(r.stdout.decode().strip().splitlines()[-1])
    return {k: stats[k] for k in ("messages", "map_used_bytes", "map_free_bytes", "map_high_water_bytes")
            if k in stats}  # fmt: skip


def run(spool: Path | None = None, size: int = 64 * 1024, limit: int = 2000, timeout: float = 120.0,
        **mta_options: Any) -> dict[str, Any]:  # fmt: skip
    """Fill until refused, drain, probe; ``mta_options`` go to ``peers.Fastmta`` (map sizes)."""
    out: dict[str, Any] = {"message_bytes": size}
    with peers.SmtpSink() as sink, peers.Fastmta(hold=True, relay_to=sink.address, spool=spool,
                                                 metrics=False, **mta_options) as mta:  # fmt: skip
        t0 = time.monotonic()
        out["accepted"], out["refusal"] = fill(mta.port, size, limit)
        out["fill_seconds"] = round(time.monotonic() - t0, 2)
        out["full"] = queue_stats(mta)
        mta.config.write_text(mta.config.read_text().replace("hold = true", "hold = false"))
        os.kill(mta.pid, signal.SIGHUP)
        out["drained"] = sink.wait_messages(out["accepted"], timeout, stall=30)
        deadline = time.monotonic() + timeout
        while (left := mta.queued()) and time.monotonic() < deadline:
            time.sleep(0.2)  # delivered: each removal commits just after the sink's 250
        out["left_in_queue"] = left
        out["drained_stats"] = queue_stats(mta)
        out["after_drain"] = probe(mta.port, size)
        mta.stop(keep_spool=True)
        mta.hold = False
        mta.start()
        out["after_restart"] = probe(mta.port, size)
    out["recovered"] = (out["refusal"].startswith("452 4.3.1") and out["drained"] and not out["left_in_queue"]
                        and out["after_drain"]["seconds"] is not None
                        and out["after_restart"]["seconds"] is not None)  # fmt: skip
    return out
