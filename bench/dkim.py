# SPDX-License-Identifier: MIT
"""DKIM relay benchmark: smtp-source → MTA → smtp-sink with signing, in one run.

    .venv/bin/python bench/dkim.py [--quick] [--reps 3] [--json OUT]

Systems (4 KiB, 50 connections, one message per connection, like bench/relay.py's
first scenario; every message's ``From:`` is in the signed domain):

* ``fastmta``: no ``[[dkim]]``, the baseline;
* ``fastmta-rsa``: one RSA-2048 ``[[dkim]]`` entry;
* ``fastmta-ed25519``: one Ed25519 entry;
* ``postfix-opendkim``: a private Postfix with an OpenDKIM milter signing with the
  same RSA key (``smtpd_milters``, ``milter_default_action = tempfail``).

Reports msg/s end to end and server CPU µs per message (the whole process tree:
fastmta's signing and spool processes, Postfix's daemons plus the opendkim
process), medians of ``--reps``, systems in alternating order. Targets: RSA ≥ 60 %
and Ed25519 ≥ 85 % of fastmta without DKIM; RSA ≥ 8× Postfix+OpenDKIM.

Ceilings, measured in the same run, say which targets this machine allows:

* ``openssl speed -seconds 3 rsa2048 ed25519`` before and after the runs: one
  signature's CPU on one core (``raw_sign_us``, the mean of the two);
* ``fastmta / postfix-opendkim``: signing can only lower fastmta's rate, so the
  RSA ratio to Postfix+OpenDKIM cannot exceed fastmta's own rate without DKIM over it;
* the CPU budget: every process (smtp-source, the MTA, smtp-sink, the signer) shares
  the cores, so with C the total CPU per message of the run without DKIM (server +
  smtp-source + smtp-sink) and S the raw signature, signing cannot keep more than
  C / (C + S) of the rate without DKIM.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import drivers, peers, relay, report  # noqa: E402

DOMAIN = drivers.SENDER.partition("@")[2]  # smtp-source's From: is its -f sender
SELECTOR = "bench"


class OpenDkim(peers.Peer):
    """``opendkim -f`` in sign mode as a milter on a loopback port, with one key."""

    name = "opendkim"

    def __init__(self, key_file: Path) -> None:
        super().__init__()
        self.key_file = key_file

    def command(self) -> list[str]:
        conf = self.workdir / "opendkim.conf"
        conf.write_text(
            f"Mode s\nDomain {DOMAIN}\nSelector {SELECTOR}\nKeyFile {self.key_file}\n"
            "Canonicalization relaxed/relaxed\nSyslog no\nInternalHosts 127.0.0.1\nRequireSafeKeys false\n"
            f"Socket inet:{self.port}@{peers.HOST}\nPidFile {self.workdir / 'opendkim.pid'}\n"
        )
        return [peers.tool("opendkim"), "-f", "-x", str(conf)]

    def _launch(self) -> None:
        """A milter has no banner for ``peers.wait_port``: up is when a connection is accepted."""
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=self.workdir, preexec_fn=peers.die_with_parent)  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.proc.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection((peers.HOST, self.port), timeout=0.5):
                return
            time.sleep(0.05)
        raise RuntimeError(f"opendkim did not listen on {self.address}: {self.log_tail(6)}")


class PostfixOpenDkim(peers.Postfix):
    """Postfix relaying through the OpenDKIM milter; CPU is both process trees."""

    def __init__(self, relayhost: str, key_file: Path) -> None:
        self.opendkim = OpenDkim(key_file)
        super().__init__(hold=False, relayhost=relayhost, milter=f"inet:{peers.HOST}:{self.opendkim.port}")

    def _launch(self) -> None:
        self.opendkim.start()
        super()._launch()

    def cpu(self) -> float:
        return super().cpu() + self.opendkim.cpu()

    def stop(self) -> None:
        super().stop()
        self.opendkim.stop()


def keygen(workdir: Path, algorithm: str) -> Path:
    """``fastmta dkim keygen``: the same RSA key signs for fastmta and for OpenDKIM."""
    subprocess.run([peers.PYTHON, "-m", "fastmta", "dkim", "keygen", "--domain", DOMAIN, "--selector",
                    f"{SELECTOR}-{algorithm}", "--algorithm", algorithm, "--dir", str(workdir)],
                   check=True, capture_output=True, cwd=ROOT)  # fmt: skip
    return workdir / f"{DOMAIN}.{SELECTOR}-{algorithm}.pem"


def dkim_table(key_file: Path, algorithm: str) -> str:
    return f'[[dkim]]\ndomain = "{DOMAIN}"\nselector = "{SELECTOR}-{algorithm}"\nkey_file = "{key_file}"\n'


def openssl_speed(seconds: int = 3) -> dict[str, float]:
    """Signatures per second on one core: ``openssl speed -seconds 3 rsa2048 ed25519``."""
    out = subprocess.run([peers.tool("openssl"), "speed", "-seconds", str(seconds), "rsa2048", "ed25519"],
                         capture_output=True, text=True, timeout=120, check=True).stdout  # fmt: skip
    found = {}
    for algorithm, label in (("rsa", r"rsa\s+2048 bits"), ("ed25519", r"\d+ bits EdDSA \(Ed25519\)")):
        line = re.search(rf"(?m)^\s*{label}\s+(.*)$", out)
        rates = [float(t) for t in line.group(1).split() if not t.endswith("s")] if line else []
        if not rates:
            raise RuntimeError(f"no {algorithm} line in openssl speed's output: {out[-300:]}")
        found[algorithm] = rates[0]  # the columns after the times: sign/s first, then verify/s
    return found


def ceilings(summary: dict[str, Any], speeds: list[dict[str, float]]) -> dict[str, Any]:
    """The bounds the module docstring describes, from this run's own measurements."""
    out: dict[str, Any] = {}
    if speeds:
        out["raw_sign_us"] = {a: round(statistics.mean(1e6 / s[a] for s in speeds), 1) for a in speeds[0]}
    plain, postfix = summary.get("fastmta"), summary.get("postfix-opendkim")
    if plain and postfix:
        out["fastmta / postfix-opendkim"] = round(plain["rate_median"] / postfix["rate_median"], 2)
    if plain and speeds:
        total = plain["cpu_us_per_msg_median"] + plain["client_cpu_us_per_msg_median"] + plain[
            "sink_cpu_us_per_msg_median"]  # fmt: skip
        out["plain_total_cpu_us_per_msg"] = round(total, 1)
        for algorithm, sign_us in out["raw_sign_us"].items():
            share = total / (total + sign_us)
            out[f"cpu budget fastmta-{algorithm} / fastmta"] = round(share, 3)
            out[f"cpu budget fastmta-{algorithm} msg/s"] = round(plain["rate_median"] * share, 1)
    return out


def signed_lines(mta: peers.Peer) -> int:
    """Delivered log lines carrying ``dkim``: proof the run signed what it relayed."""
    log = mta.workdir / "delivery.log"
    with contextlib.suppress(OSError):
        return sum('"dkim"' in line for line in log.read_text().splitlines())
    return 0


def run(quick: bool, reps: int, log: Callable[[str], None]) -> dict[str, Any]:
    count = 2000 if quick else 10_000
    timeout = 180.0 if quick else 900.0
    t0 = time.monotonic()
    keydir = Path(tempfile.mkdtemp(prefix="fastmta-bench-dkim-keys-"))
    rsa_key, ed_key = keygen(keydir, "rsa"), keygen(keydir, "ed25519")
    sink = peers.SmtpSink().start()
    makers: dict[str, Callable[[], peers.Peer]] = {
        "fastmta": lambda: peers.Fastmta(hold=False, relay_to=sink.address),
        "fastmta-rsa": lambda: peers.Fastmta(hold=False, relay_to=sink.address, name="fastmta-rsa",
                                             extra_config=dkim_table(rsa_key, "rsa")),
        "fastmta-ed25519": lambda: peers.Fastmta(hold=False, relay_to=sink.address, name="fastmta-ed25519",
                                                 extra_config=dkim_table(ed_key, "ed25519")),
        "postfix-opendkim": lambda: PostfixOpenDkim(sink.address, rsa_key),
    }  # fmt: skip
    mtas: dict[str, peers.Peer] = {}
    unavailable: dict[str, str] = {}
    runs: list[dict[str, Any]] = []
    speeds: list[dict[str, float]] = []
    load = [os.getloadavg()[0]]
    try:
        speeds.append(openssl_speed())
        log(f"openssl speed: {speeds[-1]} sign/s")
        for name, make in makers.items():
            try:
                mtas[name] = make().start()
            except Exception as e:  # reported; the others still run
                unavailable[name] = f"{type(e).__name__}: {e}"[:300]
                log(f"cannot start {name}: {unavailable[name]}")
        live = list(mtas)
        for rep in range(reps):
            for name in live if rep % 2 == 0 else live[::-1]:
                r = relay.end_to_end(mtas[name], sink, count, False, timeout)
                r.update(system=name, rep=rep)
                runs.append(r)
                log(f"rep {rep} {name:<17} {r['rate']:>8.1f} msg/s, {r['cpu_us_per_msg']:>7.1f} µs CPU/msg"
                    f" ({r['delivered']}/{count} arrived)")  # fmt: skip
        signed = {name: signed_lines(mta) for name, mta in mtas.items() if name.startswith("fastmta-")}
        load.append(os.getloadavg()[0])
        speeds.append(openssl_speed())
        log(f"openssl speed: {speeds[-1]} sign/s")
    finally:
        for peer in mtas.values():
            with contextlib.suppress(Exception):
                peer.stop()
        sink.stop()
        shutil.rmtree(keydir, ignore_errors=True)
    summary: dict[str, Any] = {}
    for name in live:
        done = [r for r in runs if r["system"] == name and r["complete"]]
        if done:
            summary[name] = {
                "rate_median": round(statistics.median(r["rate"] for r in done), 1),
                **{f"{k}_median": round(statistics.median(r[k] for r in done), 1)
                   for k in ("cpu_us_per_msg", "client_cpu_us_per_msg", "sink_cpu_us_per_msg")},
                "rates": [r["rate"] for r in done], "complete_reps": len(done), "reps": reps,
            }  # fmt: skip
    rate = {n: s["rate_median"] for n, s in summary.items()}
    ratios: dict[str, float] = {}
    if rate.get("fastmta"):
        for n in ("fastmta-rsa", "fastmta-ed25519"):
            if n in rate:
                ratios[f"{n} / fastmta"] = round(rate[n] / rate["fastmta"], 3)
    if rate.get("postfix-opendkim") and "fastmta-rsa" in rate:
        ratios["fastmta-rsa / postfix-opendkim"] = round(rate["fastmta-rsa"] / rate["postfix-opendkim"], 2)
    return {
        "bench": "dkim",
        "quick": quick,
        "count_per_run": count,
        "message_size": relay.SIZE,
        "connections": relay.CONNECTIONS,
        "unavailable": unavailable,
        "summary": summary,
        "ratios": ratios,
        "targets": {
            "fastmta-rsa / fastmta": 0.60,
            "fastmta-ed25519 / fastmta": 0.85,
            "fastmta-rsa / postfix-opendkim": 8.0,
        },  # fmt: skip
        "ceilings": ceilings(summary, speeds),
        "openssl_speed_sign_per_s": speeds,
        "load_average_1min": {"start": round(load[0], 2), "end": round(load[-1], 2)},
        "signed_delivery_log_lines": signed,
        "runs": runs,
        "elapsed_s": round(time.monotonic() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2,000 messages per run (else 10,000)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", nargs="?", const="-", metavar="OUT", help="write JSON to OUT (- = stdout)")
    args = ap.parse_args(argv)
    peers.stop_on_sigterm()
    result = run(args.quick, args.reps, lambda line: print(line, file=sys.stderr, flush=True))
    print("\n".join(report.dkim_lines(result)), file=sys.stderr)
    report.write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
