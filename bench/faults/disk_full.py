# SPDX-License-Identifier: MIT
"""Fault run: a spool that filled its own filesystem takes mail again once drained.

The spool gets a dedicated tmpfs (as a Docker or Kubernetes volume would be),
mounted for the run and unmounted after it, so this needs root. data.mdb keeps
the space the drained messages held as free pages: the filesystem stays full,
yet the spool has room. Prints one JSON object (refill.py has the steps); exit 0
when it refused with 452 4.3.1 when full and took mail again after the drain and
after a restart, 1 if not, 2 if the filesystem could not be mounted.

    sudo python bench/faults/disk_full.py [--disk-mib 48] [--size 131072]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from bench import peers  # noqa: E402
from bench.faults import refill  # noqa: E402


@contextlib.contextmanager
def tmpfs(mib: int) -> Iterator[Path]:
    """A fresh tmpfs of ``mib`` MiB on a temp dir; unmounted and removed afterwards."""
    where = Path(tempfile.mkdtemp(prefix="fastmta-fault-fs-"))
    try:
        mount = [peers.tool("mount"), "-t", "tmpfs", "-o", f"size={mib}m,mode=0700", "tmpfs", str(where)]
        subprocess.run(mount, check=True, capture_output=True, timeout=30)
        try:
            yield where
        finally:
            subprocess.run([peers.tool("umount"), "-l", str(where)], capture_output=True, timeout=30)
    finally:
        with contextlib.suppress(OSError):
            where.rmdir()


def run(disk_mib: int = 48, size: int = 128 * 1024, timeout: float = 120.0) -> dict[str, object]:
    with tmpfs(disk_mib) as fs:
        result = refill.run(spool=fs / "spool", size=size, timeout=timeout)
    return {"scenario": "disk_full", "disk_mib": disk_mib, **result}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--disk-mib", type=int, default=48, help="size of the spool's tmpfs")
    ap.add_argument("--size", type=int, default=128 * 1024, help="bytes per message")
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args(argv)
    try:
        result = run(args.disk_mib, args.size, args.timeout)
    except subprocess.CalledProcessError as e:
        print(json.dumps({"scenario": "disk_full", "error": f"mount failed: {e.stderr.decode().strip()}"}))
        return 2
    print(json.dumps(result))
    return 0 if result["recovered"] else 1


if __name__ == "__main__":
    sys.exit(main())
