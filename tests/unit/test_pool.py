# SPDX-License-Identifier: MIT
"""``delivery.pool.Pool.drop``: the idle connections a cluster lease no longer covers are closed,
the most recently used ``keep`` stay, and with nothing to close the call never yields."""

from __future__ import annotations

import asyncio

from fastmta.delivery.pool import Pool


class Conn:
    """A ``Reusable`` that records its QUIT."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.messages = 1
        self.quitted = False

    @property
    def usable(self) -> bool:
        return not self.quitted

    def abort(self) -> None:
        self.quitted = True

    async def quit(self) -> None:
        await asyncio.sleep(0)
        self.quitted = True


def test_drop_keeps_the_most_recent_and_quits_the_rest() -> None:
    async def main() -> None:
        pool: Pool[Conn] = Pool(max_messages=100, idle_timeout=30)
        conns = [Conn(f"c{i}") for i in range(3)]
        for c in conns:
            await pool.release("k", c)
        assert await pool.drop("k", keep=1) == 2
        assert [c.quitted for c in conns] == [True, True, False]
        assert pool.idle_count("k") == 1 and pool.get("k") is conns[2]
        await pool.release("k", conns[2])
        coro = pool.drop("k", keep=1)
        try:
            coro.send(None)  # nothing to close: it finishes in this one step, no await
        except StopIteration as done:
            assert done.value == 0
        else:
            coro.close()
            raise AssertionError("drop yielded to the loop with nothing to close")

    asyncio.run(main())
