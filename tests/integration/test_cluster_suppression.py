# SPDX-License-Identifier: MIT
"""``fastmta.cluster.suppression.SuppressionSync`` against a real Redis, each "node" a real
LMDB list of its own: changes travel both ways, conflicts go to the later change (a
removal wins a tie), a node joining late gets the list and brings its own, and Redis
killed, emptied or stalled loses no change and never holds up a local one."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastmta.cluster import lua
from fastmta.cluster.suppression import LOG_MAX, SuppressionSync
from fastmta.config import SpoolConfig
from fastmta.spool import suppression
from fastmta.spool.suppression import Entry, SuppressionList
from tests.fixtures.redis import RedisServer
from tests.integration.test_cluster_limits import ccfg, run, until
from tests.support import run_fastmta

pytestmark = pytest.mark.timeout(120)


class Node:
    """One node's list and its sync task."""

    def __init__(self, tmp: Path, name: str, url: str, log_max: int = LOG_MAX) -> None:
        self.list = SuppressionList.open(SpoolConfig(path=str(tmp / name)), shared=True)
        self.sync = SuppressionSync(ccfg(url, name), self.list, log_max)

    def has(self, addr: str, tenant: str = "") -> bool:
        return bool(self.list.suppressed([(0, addr)], tenant))

    def count(self) -> int:
        return len(list(suppression.entries(self.list.store, self.list.db)))

    async def close(self) -> None:
        await self.sync.close()
        self.list.close()


async def nodes(tmp: Path, url: str, *names: str, log_max: int = LOG_MAX) -> list[Node]:
    out = [Node(tmp, n, url, log_max) for n in names]
    for n in out:
        n.sync.start()
    await until(lambda: all(n.sync.synced for n in out))
    return out


def test_changes_reach_the_other_node_and_the_later_change_wins(
    tmp_path: Path, redis_server: Callable[[], RedisServer]
) -> None:
    r = redis_server()

    async def main() -> None:
        a, b = await nodes(tmp_path, r.url, "a", "b")
        try:
            await a.list.add_soon([Entry("Gone@X.test", reason="asked"), Entry("t@x.test", "shop1")])
            await until(lambda: b.has("gone@x.test") and b.has("t@x.test", "shop1"))
            assert not b.has("t@x.test", "shop2")  # a tenant's entry stays that tenant's
            [e] = [e for e in suppression.entries(b.list.store, b.list.db) if e.address == "gone@x.test"]
            assert e.reason == "asked"
            assert await b.list.remove_soon(["gone@x.test"]) == 1
            await until(lambda: not a.has("gone@x.test"))
            # an add older than that removal (a node whose change was delayed) stays lifted
            await a.list.add_soon([Entry("gone@x.test", time=time.time() - 60)])
            await until(lambda: a.list.pending() == 0)
            await asyncio.sleep(0.5)
            assert not b.has("gone@x.test")
            await until(lambda: not a.has("gone@x.test"))  # Redis said no: a follows the cluster
            # a later add wins over the removal
            await a.list.add_soon([Entry("gone@x.test", reason="again")])
            await until(lambda: b.has("gone@x.test"))
        finally:
            await a.close()
            await b.close()

    run(main)


def test_the_script_takes_a_change_over_an_older_one_and_a_removal_wins_a_tie(
    redis_server: Callable[[], RedisServer],
) -> None:
    r = redis_server()

    def send(*pairs: str) -> None:
        r.command("EVAL", lua.SUPPRESS, "2", "h", "log", "100", *pairs)

    def value(k: str) -> bytes:
        return r.command("HGET", "h", k).split(b"\r\n")[1]

    send("k", "2000 +first")
    send("k", "1000 +older")  # older: refused
    assert value("k") == b"2000 +first"
    send("k", "2000 -")  # a removal of the same ms wins the tie
    send("k", "2000 +same ms")  # and an add of that ms does not undo it
    assert value("k") == b"2000 -"
    send("k", "3000 +later")
    assert value("k") == b"3000 +later"
    send("k", "3000 +later")  # the same change again is not logged again
    assert r.command("XLEN", "log") == b":3\r\n"


def test_a_node_joining_later_gets_the_list_and_brings_its_own(
    tmp_path: Path, redis_server: Callable[[], RedisServer]
) -> None:
    r = redis_server()
    n = 10_000

    async def main() -> None:
        (a,) = await nodes(tmp_path, r.url, "a")
        # c had a list before it joined the cluster (nothing of it in any outbox)
        own = SuppressionList.open(SpoolConfig(path=str(tmp_path / "c")))
        suppression.add(own.store, own.db, [Entry(f"c{i}@c.test") for i in range(3)])
        own.close()
        try:
            await a.list.add_soon([Entry(f"u{i}@a.test", reason="bulk") for i in range(n)])
            await until(lambda: a.list.pending() == 0, 60)
            t0 = time.monotonic()
            (c,) = await nodes(tmp_path, r.url, "c")
            await until(lambda: c.count() == n + 3, 60)
            took = time.monotonic() - t0
            await until(lambda: a.count() == n + 3)  # c's own entries reached a
            print(f"\n{n} entries reached a node that joined later in {took:.2f}s")
            await c.close()
        finally:
            await a.close()

    run(main, 120)


@pytest.mark.parametrize("how", ["kill", "stall"])
def test_redis_away_loses_no_change_and_holds_up_none(
    tmp_path: Path, redis_server: Callable[[], RedisServer], how: str, caplog: pytest.LogCaptureFixture
) -> None:
    r = redis_server()

    async def main() -> None:
        a, b = await nodes(tmp_path, r.url, "a", "b")
        try:
            await a.list.add_soon([Entry("before@x.test")])
            await until(lambda: b.has("before@x.test"))
            r.kill() if how == "kill" else r.stall()
            t0 = time.monotonic()
            await a.list.add_soon([Entry("during@x.test")])
            await a.list.remove_soon(["before@x.test"])
            assert time.monotonic() - t0 < 0.5  # local changes never wait for Redis
            assert a.has("during@x.test") and not a.has("before@x.test")
            await until(lambda: not a.sync.synced and not b.sync.synced)
            await asyncio.sleep(0.5)
            assert not b.has("during@x.test") and b.has("before@x.test")
            assert a.list.pending() == 2  # kept for when Redis is back
            r.start() if how == "kill" else r.resume()  # killed: it comes back empty
            await until(lambda: b.has("during@x.test") and not b.has("before@x.test"), 30)
            await until(lambda: a.sync.synced and b.sync.synced and a.list.pending() == 0)
        finally:
            await a.close()
            await b.close()

    with caplog.at_level(logging.WARNING, "fastmta.cluster"):
        run(main)
    assert "suppression list out of sync" in caplog.text
    assert "suppression list in sync with Redis again" in caplog.text


def test_a_node_back_from_a_stop_reads_on_or_reconciles_when_the_stream_moved_on(
    tmp_path: Path, redis_server: Callable[[], RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    r = redis_server()

    def reconciles() -> int:
        return caplog.text.count("suppression list reconciled")

    async def main() -> None:
        (a,) = await nodes(tmp_path, r.url, "a", log_max=10)  # the stream keeps about 10 changes
        try:
            (b,) = await nodes(tmp_path, r.url, "b")
            assert reconciles() == 2  # both start with no cursor
            await a.list.add_soon([Entry("x@x.test")])
            await until(lambda: b.has("x@x.test"))
            await b.close()
            await a.list.add_soon([Entry("y@x.test")])
            (b,) = await nodes(tmp_path, r.url, "b")  # its cursor is still in the stream: reads on
            await until(lambda: b.has("y@x.test"))
            assert reconciles() == 2
            await b.close()
            for i in range(300):  # the stream trims its oldest entries, b's cursor with them
                await a.list.add_soon([Entry(f"z{i}@x.test")])
            await until(lambda: a.list.pending() == 0, 30)
            assert int(r.command("XLEN", "fastmta:suppress:log")[1:].split(b"\r")[0]) < 300
            (b,) = await nodes(tmp_path, r.url, "b")
            await until(lambda: b.count() == 302, 30)
            assert reconciles() == 3
            await b.close()
        finally:
            await a.close()

    with caplog.at_level(logging.INFO, "fastmta.cluster"):
        run(main)


def test_junk_in_redis_is_skipped_not_fatal(tmp_path: Path, redis_server: Callable[[], RedisServer]) -> None:
    r = redis_server()
    for field, value in (("no-nul", "1 +x"), ("\x00bad@x.test", "soon +x"), ("\x00good@x.test", "5 +ok")):
        r.command("HSET", "fastmta:suppress", field, value)

    async def main() -> None:
        (a,) = await nodes(tmp_path, r.url, "a")
        try:
            await until(lambda: a.has("good@x.test"))
            assert not a.has("bad@x.test")
            r.command("XADD", "fastmta:suppress:log", "*", "x", "y")
            r.command("XADD", "fastmta:suppress:log", "*", "k", "\x00next@x.test", "v", "6 +ok")
            await until(lambda: a.has("next@x.test"))
            assert a.sync.synced
        finally:
            await a.close()

    run(main)


def test_the_command_writes_the_outbox_only_in_a_cluster(tmp_path: Path) -> None:
    for name, cluster in (("alone", ""), ("member", '[cluster]\nredis = "redis://127.0.0.1:9/0"\n')):
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text(f'[spool]\npath = "{tmp_path / name}"\n{cluster}')
        assert run_fastmta("suppress", "add", "a@b.test", "--config", str(cfg)).returncode == 0
        assert run_fastmta("suppress", "remove", "a@b.test", "--config", str(cfg)).returncode == 0
        lst = SuppressionList.open(SpoolConfig(path=str(tmp_path / name)))
        try:
            ops = [
                c[2] for _, _, c in suppression._outgoing(lst.store, suppression.open_outbox(lst.store), 10)
            ]
        finally:
            lst.close()
        assert ops == ([] if not cluster else [False, True])


CHANGES = st.lists(
    st.tuples(st.sampled_from(["k1", "k2"]), st.integers(1, 4), st.sampled_from(["+a", "+b", "-"])),
    min_size=1,
    max_size=8,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=CHANGES, order=st.randoms())
def test_the_script_ends_alike_whatever_order_the_changes_come_in(
    redis_server: Callable[[], RedisServer], changes: list[tuple[str, int, str]], order: random.Random
) -> None:
    r = redis.Redis.from_url(_one_redis(redis_server).url)
    script = r.register_script(lua.SUPPRESS)
    shuffled = changes[:]
    order.shuffle(shuffled)
    ends = []
    for run_ in (changes, shuffled):
        h = f"h{next(_RUNS)}"
        for k, ms, op in run_:
            script(keys=[h, h + ":log"], args=[100, k, f"{ms} {op}"])
        ends.append(r.hmget(h, ["k1", "k2"]))
    r.close()
    assert ends[0] == ends[1]


_RUNS = itertools.count()
_REDIS: list[RedisServer] = []


def _one_redis(start: Callable[[], RedisServer]) -> RedisServer:
    """One Redis for every example of a Hypothesis test (each example uses fresh keys)."""
    if not _REDIS or _REDIS[0].proc is None or _REDIS[0].proc.poll() is not None:
        _REDIS[:] = [start()]
    return _REDIS[0]
