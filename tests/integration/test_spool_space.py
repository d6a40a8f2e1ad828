# SPDX-License-Identifier: MIT
"""A spool that was full takes mail again once its queue drains: the fault runs of bench/faults.

Each run is a real ``fastmta serve`` filled until it answers 452 4.3.1, drained
into Postfix's smtp-sink, then asked to take a message, and again after a
restart. LMDB's file keeps the drained messages' pages as free pages (it never
shrinks), and those count as room. The disk run mounts a real 48 MiB tmpfs
(root), as a dedicated Docker or Kubernetes volume would be.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench.faults import disk_full, map_ceiling
from tests.support import require_tool

pytestmark = pytest.mark.timeout(300)


def assert_recovered(result: dict[str, Any]) -> None:
    assert result["refusal"].startswith("452 4.3.1"), result
    assert result["drained"] and result["left_in_queue"] == 0, result
    assert result["after_drain"]["seconds"] is not None, result
    assert result["after_restart"]["seconds"] is not None, result
    drained = result["drained_stats"]
    assert drained["map_free_bytes"] > 10 * drained["map_used_bytes"], result  # the file kept its pages


def test_full_filesystem_takes_mail_again_after_the_drain() -> None:
    for tool in ("mount", "umount", "smtp-sink"):
        require_tool(tool)
    result = disk_full.run(disk_mib=48, size=128 * 1024, timeout=120)
    assert_recovered(result)
    assert result["accepted"] > 200  # it filled the disk, not some other limit


def test_map_ceiling_takes_mail_again_after_the_drain() -> None:
    require_tool("smtp-sink")
    result = map_ceiling.run(map_size="4MiB", size=32 * 1024, timeout=120)
    assert_recovered(result)
    assert result["full"]["map_high_water_bytes"] >= 0.95 * 4 * 1024**2  # past the 95 % mark
