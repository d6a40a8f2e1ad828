# SPDX-License-Identifier: MIT
"""``fastmta.cluster.limits.Cluster`` against a real Redis: leases, GCRA tokens, suspensions,
node count, and what each node does while Redis is killed, stalled and back."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from fastmta import config
from fastmta.cluster.limits import DENIED_WAIT, Cluster
from fastmta.errors import Reply
from tests.fixtures.redis import RedisServer

KEY = "[127.0.0.1]:2626"


def ccfg(url: str, node: str, **over: Any) -> config.ClusterConfig:
    raw = {"node_id": node, "redis": url, "lease_ttl": "3s", "interval": "0.2s", "timeout": "0.3s", **over}
    return config.from_dict({"hostname": "mx.fastmta.test", "cluster": raw}).cluster


def run(fn: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(fn(), timeout)

    return asyncio.run(main())


async def started(url: str, node: str, **over: Any) -> Cluster:
    c = Cluster(ccfg(url, node, **over))
    await c.start()
    return c


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def test_connection_leases_hold_across_nodes(redis_server: Callable[[], RedisServer]) -> None:
    r = redis_server()

    async def main() -> None:
        a, b = await started(r.url, "a"), await started(r.url, "b")
        try:
            assert await a.open(KEY, 2) == 0 and await a.open(KEY, 2) == 0
            assert await b.open(KEY, 2) == DENIED_WAIT  # at the limit: node b waits
            assert await a.open(KEY, 2) == DENIED_WAIT  # node a too
            a.close_slot(KEY)  # a worker of node a ended: its lease goes back
            assert a.leases(KEY) == 1
            await until(lambda: r.command("ZCARD", f"fastmta:conn:{KEY}") == b":1\r\n")
            assert await b.open(KEY, 2) == 0
            assert int(r.command("ZCARD", f"fastmta:conn:{KEY}").split(b":")[1]) == 2
        finally:
            await a.close()
            await b.close()
        assert b"*0" in r.command("ZRANGE", f"fastmta:conn:{KEY}", "0", "-1")  # close gave them back

    run(main)


def test_a_refused_node_is_heard_by_the_holders(redis_server: Callable[[], RedisServer]) -> None:
    """Holders keep idle leases until another node is refused one: the refusal raises a want
    flag, each holder sees it at its next heartbeat, and it falls again once nobody asks."""
    r = redis_server()

    async def main() -> None:
        a, b = await started(r.url, "a"), await started(r.url, "b")
        try:
            assert await a.open(KEY, 1) == 0
            await a.heartbeat()
            assert not a.wanted(KEY)  # nobody asked: a keeps its lease, idle or not
            assert await b.open(KEY, 1) == DENIED_WAIT
            assert not a.wanted(KEY)  # heard at the next heartbeat, not before
            await a.heartbeat()
            assert a.wanted(KEY) and not b.wanted(KEY)  # b holds nothing: nothing to give
            await until(lambda: not a.wanted(KEY), 5)  # b stopped asking: the flag lapses
            assert await b.open(KEY, 2) == 0  # a grant raises no flag
            await a.heartbeat()
            assert not a.wanted(KEY)
        finally:
            await a.close()
            await b.close()

    run(main)


def test_workers_started_together_ask_in_one_script(redis_server: Callable[[], RedisServer]) -> None:
    """A burst of new work starts many workers at once: one ACQUIRE for all of them, granted up
    to the limit (one Redis round trip and connection, not one each)."""
    r = redis_server()

    async def main() -> list[float]:
        a = await started(r.url, "a")
        try:
            r.command("CONFIG", "RESETSTAT")
            waits = await asyncio.gather(*(a.open(KEY, 3) for _ in range(5)))
            assert a.leases(KEY) == 3
            assert int(r.command("ZCARD", f"fastmta:conn:{KEY}").split(b":")[1]) == 3
        finally:
            await a.close()
        return list(waits)

    waits = run(main)
    assert sorted(waits) == [0, 0, 0, DENIED_WAIT, DENIED_WAIT]
    stats = r.command("INFO", "commandstats").decode().splitlines()
    line = next(x for x in stats if x.startswith("cmdstat_evalsha:"))
    stat = dict(kv.split("=") for kv in line.split(":", 1)[1].split(","))
    assert int(stat["calls"]) - int(stat["failed_calls"]) == 1, line  # (a first NOSCRIPT loads the script)


def test_a_dead_nodes_leases_lapse(redis_server: Callable[[], RedisServer]) -> None:
    r = redis_server()

    async def main() -> None:
        a, b = await started(r.url, "a"), await started(r.url, "b")
        try:
            assert await a.open(KEY, 1) == 0
            assert a._task is not None
            a._task.cancel()  # node a dies: no more renewals
            assert await b.open(KEY, 1) == DENIED_WAIT
            await asyncio.sleep(1.0)
            assert await b.open(KEY, 1) == DENIED_WAIT  # a live node's lease does not lapse early
            t0 = time.monotonic()
            while await b.open(KEY, 1) != 0:
                await asyncio.sleep(0.1)
            assert time.monotonic() - t0 < 3.5  # within lease_ttl
        finally:
            await b.close()
            a.up = False  # it is "dead": no goodbye
            await a.close()

    run(main)


def test_rate_tokens_are_shared_and_batched(redis_server: Callable[[], RedisServer]) -> None:
    r = redis_server()
    rate, seconds = 200.0, 2.0

    async def main() -> tuple[int, int]:
        nodes = [await started(r.url, n, batch=100, interval="10s", lease_ttl="30s") for n in "abc"]
        r.command("CONFIG", "RESETSTAT")
        sent = 0

        async def spend(c: Cluster) -> None:
            nonlocal sent
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                wait = await c.token(KEY, rate)
                if wait == 0:
                    sent += 1
                else:
                    await asyncio.sleep(wait)

        try:
            await asyncio.gather(*(spend(c) for c in nodes))
        finally:
            for c in nodes:
                await c.close()
        stats = r.command("INFO", "commandstats").decode()
        calls = sum(int(line.split("calls=")[1].split(",")[0]) for line in stats.splitlines()
                    if line.startswith(("cmdstat_evalsha", "cmdstat_eval:")))  # fmt: skip
        return sent, calls

    sent, calls = run(main)
    # rate × time, plus the one burst of the shared bucket (a tenth of a second: 20 tokens)
    assert rate * seconds * 0.85 <= sent <= rate * seconds + 20 + 1, sent
    # tokens come up to 20 at a time (0.1 s worth); three nodes waking for the same batch each
    # ask for it (a refused ask waits for the next whole batch): a few round trips per
    # 20 messages, never one per message
    assert calls <= sent / 3, (calls, sent)


def test_suspensions_and_limits_reach_every_node(redis_server: Callable[[], RedisServer]) -> None:
    r = redis_server()

    async def main() -> None:
        a, b = await started(r.url, "a"), await started(r.url, "b")
        seen: list[Any] = []
        b.on_state = lambda s, lim: seen.append((s, lim))
        try:
            a.suspend(KEY, 30, Reply(421, "4.7.28", "TSS04 slow down"), "rate_limited")
            a.limit("other.test", 30, 1, 5.0)
            await until(lambda: bool(seen) and KEY in seen[-1][0])
            left, reply, cls = seen[-1][0][KEY]
            assert 28 < left <= 30 and cls == "rate_limited"
            assert reply == Reply(421, "4.7.28", "TSS04 slow down")
            assert seen[-1][1]["other.test"][1:] == (1, 5.0)
            a.suspend(KEY, 5, Reply(421, "4.7.0", "shorter"), "other")  # a later end wins
            b.resume(KEY)
            await until(lambda: KEY not in seen[-1][0])
            assert int(r.command("ZCARD", "fastmta:nodes").split(b":")[1]) == 2
            await until(lambda: a.nodes == 2)
        finally:
            await a.close()
            await b.close()

    run(main)


def drill(r: RedisServer, mode: str, how: str, caplog: pytest.LogCaptureFixture) -> None:
    """Redis goes away (``how``: kill or stall) and comes back; the node's answers meanwhile."""

    async def main() -> None:
        # b in the same mode: its heartbeat may notice the outage too (the longer Redis is
        # away, the likelier), and its warning must not pass for a's
        a = await started(r.url, "a", on_redis_failure=mode)
        b = await started(r.url, "b", on_redis_failure=mode)
        try:
            await until(lambda: a.nodes == 2)
            if how == "kill":
                r.kill()
            else:
                r.stall()
            t0 = time.monotonic()
            first = await a.open(KEY, 4)
            assert time.monotonic() - t0 < 1.5  # a stalled Redis costs one timeout, not a hang
            assert not a.up
            if mode == "local":
                assert first == 0 and await a.open(KEY, 4) == 0  # this node's share: 4 / 2 nodes
                assert await a.open(KEY, 4) == DENIED_WAIT
                assert await a.token(KEY, 10.0) == 0  # local pacing at 10 / 2 nodes = 5/s
                assert 0.1 < await a.token(KEY, 10.0) <= 0.2
            else:
                assert first > 0 and await a.token(KEY, 0) > 0  # paused: nothing starts
            if how == "kill":
                r.start()
            else:
                r.resume()
            await until(lambda: a.up)
            assert await a.token(KEY, 0) == 0
            if mode == "local":  # the connections opened meanwhile hold leases again
                held = list(a._dests[KEY].held)
                assert len(held) == 2
                await until(lambda: all(not r.command("ZSCORE", f"fastmta:conn:{KEY}", m).startswith(b"$-1")
                                        for m in held))  # fmt: skip
        finally:
            await a.close()
            await b.close()

    with caplog.at_level(logging.WARNING, "fastmta.cluster"):
        run(main)
    text = caplog.text
    assert "Redis unreachable" in text and "Redis answers again" in text
    assert ("falling back to this node's share" in text) == (mode == "local")


@pytest.mark.parametrize("how", ["kill", "stall"])
@pytest.mark.parametrize("mode", ["local", "pause"])
def test_redis_failure(
    redis_server: Callable[[], RedisServer], mode: str, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    drill(redis_server(), mode, how, caplog)
