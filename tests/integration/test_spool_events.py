# SPDX-License-Identifier: MIT
"""The webhooks' event journal in a real spool (writer process): numbering, cursors, pruning
once every webhook has an event, and the ``max_backlog`` bound at and past its edge."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastmta.config import SpoolConfig
from fastmta.spool import Spool


def _spool(tmp_path: Path) -> Spool:
    return Spool.open(SpoolConfig(path=str(tmp_path / "spool"), map_size=64 * 1024**2))


def test_journal_numbers_prunes_and_never_reuses_a_number(tmp_path: Path) -> None:
    async def run() -> None:
        spool = _spool(tmp_path)
        await spool.start()
        try:
            assert await spool.append_events([b"delivered\n{}", b"bounced\n{}"], keep=100) == 2
            assert await spool.append_events([b"deferred\n{}"], keep=100) == 3
            items, first, last = spool.events_after(0, 10)
            assert [s for s, _ in items] == [1, 2, 3] and (first, last) == (1, 3)
            assert spool.events_after(1, 1)[0] == [(2, b"bounced\n{}")]
            await spool.ack_events("a", 3, ["a", "b"])  # b has nothing yet: all kept
            assert len(spool.events_after(0, 10)[0]) == 3 and spool.events_cursor("a") == 3
            await spool.ack_events("b", 2, ["a", "b"])  # both have 1 and 2
            assert [s for s, _ in spool.events_after(0, 10)[0]] == [3]
            await spool.ack_events("b", 3, ["a", "b"])
            assert spool.events_after(0, 10) == ([], 4, 3)  # empty: first = last + 1
            assert await spool.append_events([b"delivered\n{}"], keep=100) == 4  # not 1 again
        finally:
            await spool.aclose()

    asyncio.run(run())


def test_backlog_bound_at_and_past_its_edge(tmp_path: Path) -> None:
    async def run() -> None:
        spool = _spool(tmp_path)
        await spool.start()
        try:
            await spool.append_events([b"delivered\n{}"] * 5, keep=5)
            assert [s for s, _ in spool.events_after(0, 10)[0]] == [1, 2, 3, 4, 5]  # at the edge: all kept
            await spool.append_events([b"delivered\n{}"], keep=5)
            items, first, last = spool.events_after(0, 10)
            assert [s for s, _ in items] == [2, 3, 4, 5, 6] and (first, last) == (
                2,
                6,
            )  # past it: oldest gone
        finally:
            await spool.aclose()

    asyncio.run(run())
