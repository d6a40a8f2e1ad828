# SPDX-License-Identifier: MIT
"""The one benchmark command: every bench under bench/, then a table, JSON and a chart.

    .venv/bin/python bench/run.py [--quick] [--only accept,relay] [--reps 3]

Each bench runs as its own subprocess with ``--json`` (its progress lines go to
this terminal) under a wall-clock bound, so one broken bench is reported and the
others still run. Writes ``bench/results/<date>.json``, ``<date>.md`` (the
Markdown report it also prints) and ``<date>.png``; ``bench/report.py
<date>.json --readme`` gives the short tables of docs/performance.md.
``--quick`` finishes in under 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import peers, report  # noqa: E402

# name → (script, arguments with --quick, without, timeout quick, timeout full);
# parser.py, spool.py, workers.py and local.py belong to their areas and take their own flags.
BENCHES: dict[str, tuple[str, list[str], list[str], float, float]] = {
    "parser": ("parser.py", ["--reps", "5"], [], 120, 900),
    "spool": ("spool.py", ["--quick"], [], 180, 1800),
    "accept": ("accept.py", ["--quick"], ["--full"], 450, 7200),
    "relay": ("relay.py", ["--quick"], [], 240, 3600),
    "dkim": ("dkim.py", ["--quick"], [], 420, 3600),
    "profile": ("profile.py", ["--quick"], [], 90, 300),
    "workers": ("workers.py", ["--quick"], [], 180, 1800),
    "local": ("local.py", ["--quick"], [], 120, 900),
    "http": ("http_api.py", ["--quick"], [], 420, 3600),
    "cluster": ("cluster.py", ["--quick"], [], 600, 1800),
}


def run_bench(name: str, quick: bool, reps: int | None, extra: list[str]) -> dict[str, Any]:
    """One bench as a subprocess with ``--json FILE``; its error, not an exception, on failure."""
    script, quick_args, full_args, t_quick, t_full = BENCHES[name]
    path = ROOT / "bench" / script
    if not path.exists():
        return {"error": f"bench/{script} not present yet"}
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        out = Path(tmp.name)
    cmd = [sys.executable, str(path), "--json", str(out), *(quick_args if quick else full_args)]
    if reps is not None and name in ("accept", "relay", "dkim"):
        cmd += ["--reps", str(reps)]
    cmd += extra
    print(f"== {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    start = time.monotonic()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, env=env, preexec_fn=peers.die_with_parent
    )
    try:
        rc = proc.wait(timeout=t_quick if quick else t_full)
    except subprocess.TimeoutExpired:
        out.unlink(missing_ok=True)
        return {"error": f"timed out after {time.monotonic() - start:.0f} s"}
    finally:
        if proc.poll() is None:
            proc.terminate()  # the bench stops its peers by pid in its finally blocks
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    try:
        data: dict[str, Any] = json.loads(out.read_text())
    except (OSError, ValueError):
        data = {"error": f"exit {rc}, no JSON result"}
    finally:
        out.unlink(missing_ok=True)
    data.setdefault("wall_s", round(time.monotonic() - start, 1))
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the < 10 minute suite")
    ap.add_argument(
        "--only", default=",".join(BENCHES), help="comma-separated subset of " + ",".join(BENCHES)
    )
    ap.add_argument("--reps", type=int, default=None, help="repetitions for accept and relay [3]")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"), help="directory for <date>.json/.png")
    ap.add_argument(
        "--note", default="", help="a line for the report (e.g. 'machine shared with other jobs')"
    )
    ap.add_argument("--accept-args", default="", help="extra arguments for bench/accept.py")
    ap.add_argument("--relay-args", default="", help="extra arguments for bench/relay.py")
    args = ap.parse_args(argv)
    peers.stop_on_sigterm()
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        ap.error(f"unknown benches {unknown}")
    start = time.monotonic()
    now = datetime.datetime.now(datetime.UTC)
    result: dict[str, Any] = {
        "date": now.strftime("%Y-%m-%d"),
        "started": now.isoformat(timespec="seconds"),
        "quick": args.quick,
        "command": "bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": report.machine(),
        "note": args.note,
        "benches": {},
    }
    extras = {"accept": args.accept_args.split(), "relay": args.relay_args.split()}
    for name in names:
        result["benches"][name] = run_bench(name, args.quick, args.reps, extras.get(name, []))
    result["elapsed_s"] = round(time.monotonic() - start, 1)
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{result['date']}.json"
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    png_path = out_dir / f"{result['date']}.png"
    text = report.render(result)
    (out_dir / f"{result['date']}.md").write_text(text)
    try:
        report.chart(result, png_path)
    except Exception as e:  # a chart problem must not lose the numbers
        print(f"chart failed: {type(e).__name__}: {e}", file=sys.stderr)
    print(text)
    print(f"wrote {json_path}, .md and .png in {result['elapsed_s']} s", file=sys.stderr)
    return 0 if all("error" not in b for b in result["benches"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
