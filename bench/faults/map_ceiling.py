# SPDX-License-Identifier: MIT
"""Fault run: a spool that reached 95 % of ``[spool] max_map_size`` takes mail again once drained.

LMDB's high-water mark stays where the fill left it; what is free is the map
above it plus the free pages below it. Prints one JSON object (refill.py has the
steps); exit 0 when the spool refused with 452 4.3.1 when full and took mail
again after the drain and after a restart, else 1. Bounded: ``--timeout`` per wait.

    python bench/faults/map_ceiling.py [--map-size 4MiB] [--size 32768]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from bench.faults import refill  # noqa: E402


def run(map_size: str = "4MiB", size: int = 32 * 1024, timeout: float = 120.0) -> dict[str, object]:
    result = refill.run(size=size, timeout=timeout, map_size=map_size, max_map_size=map_size)
    return {"scenario": "map_ceiling", "max_map_size": map_size, **result}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--map-size", default="4MiB", help="map_size = max_map_size of the spool")
    ap.add_argument("--size", type=int, default=32 * 1024, help="bytes per message")
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args(argv)
    result = run(args.map_size, args.size, args.timeout)
    print(json.dumps(result))
    return 0 if result["recovered"] else 1


if __name__ == "__main__":
    sys.exit(main())
