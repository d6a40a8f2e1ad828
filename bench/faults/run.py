# SPDX-License-Identifier: MIT
"""Run every fault scenario with bounded defaults and collect their JSON in one file.

    .venv/bin/python bench/faults/run.py [--only mail_loop,slowloris] [--out FILE]   (make faults)

Each scenario runs as its own subprocess under a wall-clock bound, so one that
hangs or crashes is reported and the others still run. Slowloris needs a target:
a ``fastmta serve`` (bench peer) with ``command_timeout`` of 10 s, which it must
close every dripping connection near. ``disk_full`` mounts a tmpfs, so it needs
root. Writes ``bench/results/faults-<date>.json`` and prints a one-line summary per
scenario; exit 0 when every scenario passed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.peers import PYTHON, Fastmta, stop_on_sigterm  # noqa: E402

SLOWLORIS_TIMEOUT = 10.0  # the target's [limits] command_timeout, seconds
SLOWLORIS_MAX_TIME = 40.0  # a dripping connection still open after this is a failure
# name → (arguments, wall-clock bound in seconds)
SCENARIOS: dict[str, tuple[list[str], float]] = {
    "mail_loop": (["--deadline", "30"], 120.0),
    "slowloris": (["--connections", "20", "--interval", "1", "--max-time", str(SLOWLORIS_MAX_TIME)], 90.0),
    "disk_full": (["--disk-mib", "48", "--timeout", "120"], 600.0),
    "map_ceiling": (["--map-size", "4MiB", "--timeout", "120"], 600.0),
}


def _json_of(stdout: str) -> Any:
    """The JSON object a scenario printed (the whole output, or its last line)."""
    text = stdout.strip()
    for candidate in (text, text.splitlines()[-1] if text else ""):
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    return None


def _passed(name: str, exit_code: int | None, result: Any) -> bool:
    """A scenario passed when it exited 0; slowloris (which only reports) when the server
    closed every connection, none reaching ``--max-time``."""
    if name != "slowloris":
        return exit_code == 0
    return (
        exit_code == 0
        and isinstance(result, dict)
        and result["closed_by_server"] == result["connections"]
        and result["held_s"]["max"] < SLOWLORIS_MAX_TIME
    )


def run_one(name: str) -> dict[str, Any]:
    args, bound = SCENARIOS[name]
    target = None
    if name == "slowloris":
        limits = f'command_timeout = "{SLOWLORIS_TIMEOUT:g}s"'
        target = Fastmta(metrics=False, name="fault-slowloris", limits=limits)
        target.start()
        args = [*args, "--port", str(target.port)]
    t0 = time.monotonic()
    try:
        proc = subprocess.run([PYTHON, str(ROOT / "bench" / "faults" / f"{name}.py"), *args],
                              capture_output=True, text=True, timeout=bound, cwd=ROOT)  # fmt: skip
        exit_code: int | None = proc.returncode
        result = _json_of(proc.stdout)
        error = proc.stderr.strip()[-2000:] if result is None else ""
    except subprocess.TimeoutExpired:
        exit_code, result, error = None, None, f"still running after {bound:g} s: killed"
    finally:
        if target is not None:
            target.stop()
    out = {"exit": exit_code, "seconds": round(time.monotonic() - t0, 1), "result": result}
    if error:
        out["error"] = error
    out["ok"] = _passed(name, exit_code, result)
    return out


def summary(name: str, out: dict[str, Any]) -> str:
    """One line a scenario: passed or not, time, and its key numbers."""
    r = out["result"] if isinstance(out["result"], dict) else {}
    if name == "mail_loop":
        detail = ", ".join(f"{k}: {v.get('hops')} hops, {v.get('enhanced')} in {v.get('seconds')} s"
                           for k, v in r.items() if isinstance(v, dict))  # fmt: skip
    elif name == "slowloris":
        held = r.get("held_s", {})
        detail = (f"{r.get('closed_by_server')}/{r.get('connections')} closed by the server, "
                  f"held {held.get('min')}–{held.get('max')} s")  # fmt: skip
    else:
        flat = {k: v for k, v in r.items() if not isinstance(v, (dict, list)) and k != "scenario"}
        detail = ", ".join(f"{k}: {v}" for k, v in flat.items())
    return f"{name}: {'ok' if out['ok'] else 'FAILED'} ({out['seconds']} s) {detail or out.get('error', '')}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--only", help="comma-separated scenario names (default: all)")
    ap.add_argument("--out", help="result file (default: bench/results/faults-<date>.json)")
    args = ap.parse_args(argv)
    stop_on_sigterm()
    names = args.only.split(",") if args.only else list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "scenarios": {}}
    for name in names:
        report["scenarios"][name] = out = run_one(name)
        print(summary(name, out), flush=True)
    report["ok"] = all(s["ok"] for s in report["scenarios"].values())
    default = ROOT / "bench" / "results" / f"faults-{time.strftime('%Y-%m-%d')}.json"
    path = Path(args.out) if args.out else default
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"written to {path}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
