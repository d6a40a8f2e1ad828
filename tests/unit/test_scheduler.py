# SPDX-License-Identifier: MIT
"""Scheduler behaviour with fakes of our own seams (in-memory spool, scripted Deliverer)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastmta import config
from fastmta.errors import Bounced, Deferred, Delivered, Reply
from fastmta.scheduler import start_delivery
from fastmta.scheduler.core import Scheduler
from fastmta.scheduler.feeder import Feeder
from fastmta.scheduler.shard import shard_of
from tests.fixtures.scheduler import FakeDeliverer, FakeSpool, LogSink

OK = Delivered(Reply(250, "2.0.0", "queued as X"))
TEMP = Deferred(Reply(451, "4.3.0", "try later"), "other")
USER_UNKNOWN = Bounced(Reply(550, "5.1.1", "no such user"), "invalid_recipient")
REFUSED = Deferred(Reply(421, "4.4.1", "connection refused"), "connection")


def make_cfg(**delivery: Any) -> config.Config:
    raw: dict[str, Any] = {"hostname": "mx.fastmta.test", "delivery": {"retry_schedule": ["1s"], **delivery}}
    return config.from_dict(raw)


def run(coro: Awaitable[Any], timeout: float = 10.0) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(main())


async def settle(sched: Scheduler, cond: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait until ``cond()`` holds and every round has been persisted."""
    deadline = time.monotonic() + timeout
    while not (cond() and not sched.rounds):
        assert time.monotonic() < deadline, f"not settled: {len(sched.rounds)} rounds open"
        await asyncio.sleep(0.01)


def build(spool: FakeSpool, script: Any, **delivery: Any) -> tuple[Scheduler, FakeDeliverer, LogSink]:
    dlv = FakeDeliverer(script)
    logs = LogSink()
    sched = Scheduler(make_cfg(**delivery), spool, dlv, None, logs)  # type: ignore[arg-type]
    return sched, dlv, logs


def gated(gate: asyncio.Event, key: str | None = "slow.test") -> Callable[..., Awaitable[Any]]:
    """A delivery script: deliveries to ``key`` (every one with None) wait for ``gate``."""

    async def script(d: Any, e: Any, i: int) -> Any:
        if key is None or d.key == key:
            await gate.wait()
        return OK

    return script


def test_delivered_message_leaves_the_spool_and_is_logged(fake_spool: FakeSpool) -> None:
    async def t() -> None:
        sched, dlv, logs = build(fake_spool, lambda d, e, i: OK)
        env = fake_spool.add("a@src.test", ["b@dst.test", "c@dst.test"])
        sched.submit([env])
        await settle(sched, lambda: not fake_spool.envs)
        assert [c[0] for c in dlv.calls] == ["dst.test"]  # one transaction for both recipients
        assert dlv.calls[0][2] == [0, 1]
        recs = logs.events("delivered")
        assert {r["rcpt"] for r in recs} == {"b@dst.test", "c@dst.test"}
        r = recs[0]
        assert (
            r["id"] == env.id and r["code"] == 250 and r["attempt"] == 1 and r["nexthop"].startswith("mx.dst")
        )
        assert logs.writes == 1

    run(t())


def test_log_lines_carry_the_tls_policy(fake_spool: FakeSpool) -> None:
    async def t() -> None:
        sched, dlv, logs = build(fake_spool, lambda d, e, i: OK if i == 0 else TEMP)
        dlv.tls_policy = "mta-sts-enforce"
        sched.submit([fake_spool.add("a@src.test", ["b@dst.test", "c@dst.test"])])
        await settle(sched, lambda: bool(logs.events("deferred")))
        assert [r["tls_policy"] for r in logs.events("delivered") + logs.events("deferred")] == [
            "mta-sts-enforce", "mta-sts-enforce"
        ]  # fmt: skip
        dlv.tls_policy = ""  # local delivery: no field
        sched.submit([fake_spool.add("a@src.test", ["d@dst.test"])])
        await settle(sched, lambda: len(logs.events("delivered")) == 2)
        assert "tls_policy" not in logs.events("delivered")[1]

    run(t())


def test_recipients_split_per_destination_with_separate_states(fake_spool: FakeSpool) -> None:
    def script(d: Any, e: Any, i: int) -> Any:
        return {"ok.test": OK, "temp.test": TEMP, "bad.test": USER_UNKNOWN}[d.key]

    async def t() -> None:
        sched, dlv, logs = build(fake_spool, script)
        env = fake_spool.add("a@src.test", ["x@ok.test", "y@temp.test", "z@bad.test", "w@bad.test"])
        before = time.time()
        sched.submit([env])
        await settle(sched, lambda: fake_spool.updates >= 1)
        assert sorted(c[0] for c in dlv.calls) == ["bad.test", "ok.test", "temp.test"]
        stored = fake_spool.envs[env.id]
        assert [r.state for r in stored.rcpts] == ["done", "pending", "failed", "failed"]
        assert stored.rcpts[1].last_error == "451 4.3.0 try later"
        assert before + 0.85 <= stored.next_attempt <= time.time() + 1.15  # "1s" with ±10 % jitter
        assert len(fake_spool.dsns) == 1  # one DSN covers both failed recipients
        dsn_env, body = fake_spool.dsns[0]
        assert dsn_env.sender == "" and [r.addr for r in dsn_env.rcpts] == ["a@src.test"]
        msg = email.message_from_bytes(body, policy=email.policy.default)
        blocks = list(msg.iter_parts())[1].get_payload()
        assert [b["Final-Recipient"] for b in blocks[1:]] == ["rfc822; z@bad.test", "rfc822; w@bad.test"]
        assert {r["event"] for r in logs.records} == {"delivered", "deferred", "bounced"}
        bounced = logs.events("bounced")[0]
        assert bounced["bounce_class"] == "invalid_recipient" and bounced["code"] == 550

    run(t())


def test_no_dsn_for_null_sender(fake_spool: FakeSpool) -> None:
    async def t() -> None:
        sched, _, _ = build(fake_spool, lambda d, e, i: USER_UNKNOWN)
        sched.submit([fake_spool.add("", ["b@dst.test"])])
        await settle(sched, lambda: not fake_spool.envs)
        assert fake_spool.dsns == []

    run(t())


def test_dsn_carries_the_tenant_of_its_message(fake_spool: FakeSpool) -> None:
    """A bounce is mail sent for the tenant too: its delivery log lines and webhooks name it."""

    async def t() -> None:
        sched, _, _ = build(fake_spool, lambda d, e, i: USER_UNKNOWN)
        sched.submit([fake_spool.add("a@src.test", ["b@dst.test"], tenant="acme")])
        await settle(sched, lambda: not fake_spool.envs)
        [(dsn, _)] = fake_spool.dsns
        assert dsn.sender == "" and dsn.tenant == "acme"

    run(t())


def test_concurrency_cap_per_destination(fake_spool: FakeSpool) -> None:
    async def slow_ok(d: Any, e: Any, i: int) -> Any:
        await asyncio.sleep(0.02)
        return OK

    async def t() -> None:
        sched, dlv, _ = build(fake_spool, slow_ok, max_connections_per_destination=3)
        sched.submit([fake_spool.add("a@src.test", ["b@dst.test"]) for _ in range(30)])
        sched.submit([fake_spool.add("a@src.test", ["b@other.test"]) for _ in range(5)])
        await settle(sched, lambda: not fake_spool.envs)
        assert dlv.max_active["dst.test"] == 3
        assert dlv.max_active["other.test"] == 3
        assert len(dlv.calls) == 35

    run(t())


def test_slow_destination_does_not_delay_a_fast_one(fake_spool: FakeSpool) -> None:
    gate = asyncio.Event()

    script = gated(gate)

    async def t() -> None:
        sched, dlv, _ = build(fake_spool, script, max_connections_per_destination=2, shards=1)
        slow = [fake_spool.add("a@src.test", ["b@slow.test"]) for _ in range(20)]
        fast = [fake_spool.add("a@src.test", ["b@fast.test"]) for _ in range(20)]
        sched.submit(slow + fast)  # the slow ones first, in the same shard
        deadline = time.monotonic() + 10  # ms when it works; blocked would be forever
        while any(e.id in fake_spool.envs for e in fast):
            assert time.monotonic() < deadline, "fast destination blocked behind the slow one"
            await asyncio.sleep(0.01)
        assert all(e.id in fake_spool.envs for e in slow)
        gate.set()
        await settle(sched, lambda: not fake_spool.envs)

    run(t())


def test_421_throttles_every_queued_message_to_the_destination(fake_spool: FakeSpool) -> None:
    async def t() -> None:
        sched, dlv, logs = build(
            fake_spool,
            lambda d, e, i: REFUSED if d.key == "dead.test" else OK,
            max_connections_per_destination=1,
            retry_schedule=["60s"],
        )
        dead = [fake_spool.add("a@src.test", ["b@dead.test"]) for _ in range(10)]
        sched.submit(dead + [fake_spool.add("a@src.test", ["b@ok.test"])])
        await settle(sched, lambda: fake_spool.updates >= 11)
        assert [c[0] for c in dlv.calls].count("dead.test") == 1  # tried once, the rest waited
        dues = [fake_spool.envs[e.id].next_attempt for e in dead]
        assert all(time.time() + 50 < due < time.time() + 70 for due in dues)
        dq = sched.shards[shard_of("dead.test", len(sched.shards))].dests["dead.test"]
        assert all(due >= dq.suspended_until for due in dues)  # nobody comes back before the suspension ends
        deferred = logs.events("deferred")
        assert len(deferred) == 10
        assert sum("suspended" in r["response"] for r in deferred) == 9
        assert {r["bounce_class"] for r in deferred} == {"connection"}  # the cause, also for the untried
        # new mail to it while suspended is deferred without a connection
        sched.submit([fake_spool.add("a@src.test", ["c@dead.test"])])
        await settle(sched, lambda: fake_spool.updates >= 12)
        assert [c[0] for c in dlv.calls].count("dead.test") == 1

    run(t())


def test_queue_flush_signal_lifts_only_the_flushed_destinations(fake_spool: FakeSpool, tmp_path: Any) -> None:
    from fastmta.spool import admin, flush
    from fastmta.spool.store import Store

    store = Store(str(tmp_path), 1024**2, 8 * 1024**2)

    def signal(domains: Any) -> None:
        admin.signal_flush(store, domains)
        with store.read() as txn:
            fake_spool.flush_raw = bytes(txn.get(flush.KEY, db=store.meta))

    async def t() -> None:
        sched, dlv, _ = build(fake_spool, lambda d, e, i: REFUSED, retry_schedule=["1h"])
        feeder = Feeder(sched)
        sched.submit([fake_spool.add("a@src.test", [f"b@{d}.test"]) for d in ("one", "two")])
        await settle(sched, lambda: fake_spool.updates >= 2)
        dq = {d: sched.shards[shard_of(d, len(sched.shards))].dests[d] for d in ("one.test", "two.test")}
        assert all(q.suspended(time.time()) for q in dq.values())
        signal(["ONE.test"])
        feeder.check_flush()
        assert not dq["one.test"].suspended(time.time()) and dq["two.test"].suspended(time.time())
        feeder.check_flush()  # the same generation again: nothing more to do
        signal(None)
        feeder.check_flush()
        assert not dq["two.test"].suspended(time.time())
        for e in list(fake_spool.envs.values()):
            e.next_attempt = time.time() - 1  # what the flush's reschedule does
        await feeder.scan()
        await settle(sched, lambda: fake_spool.updates >= 4)
        assert sorted(c[0] for c in dlv.calls) == ["one.test", "one.test", "two.test", "two.test"]

    try:
        run(t())
    finally:
        store.close()


def test_shaping_rule_suspends_destination_on_tss04(fake_spool: FakeSpool) -> None:
    tss = Deferred(
        Reply(421, "4.7.0", "[TSS04] Messages temporarily deferred due to user complaints"), "rate_limited"
    )

    async def t() -> None:
        sched, dlv, _ = build(
            fake_spool,
            lambda d, e, i: tss if d.key == "yahoo.test" else OK,
            max_connections_per_destination=1,
            shaping=[{"match": "TSS04", "action": "suspend", "duration": "2h"}],
        )
        msgs = [fake_spool.add("a@src.test", ["b@yahoo.test"]) for _ in range(5)]
        sched.submit(msgs)
        await settle(sched, lambda: fake_spool.updates >= 5)
        assert len(dlv.calls) == 1
        now = time.time()
        assert all(now + 7100 < fake_spool.envs[e.id].next_attempt < now + 7300 for e in msgs)

    run(t())


def test_shaping_limit_lowers_connections(fake_spool: FakeSpool) -> None:
    first = [True]

    async def script(d: Any, e: Any, i: int) -> Any:
        await asyncio.sleep(0.01)
        if first[0]:
            first[0] = False
            return Deferred(Reply(451, "4.7.28", "rate limited, slow down"), "rate_limited")
        return OK

    async def t() -> None:
        sched, dlv, _ = build(
            fake_spool,
            script,
            max_connections_per_destination=5,
            shaping=[{"match": "4\\.7\\.28", "action": "limit", "max_connections": 1, "duration": "1h"}],
        )
        sched.submit([fake_spool.add("a@src.test", ["b@gmail.test"])])
        await settle(sched, lambda: bool(dlv.calls))
        dlv.max_active.clear()
        sched.submit([fake_spool.add("a@src.test", ["b@gmail.test"]) for _ in range(20)])
        await settle(sched, lambda: len(dlv.calls) == 21)
        assert dlv.max_active["gmail.test"] == 1

    run(t())


def test_message_rate_per_destination(fake_spool: FakeSpool) -> None:
    async def t() -> None:
        sched, dlv, _ = build(fake_spool, lambda d, e, i: OK, message_rate_per_destination=20)
        sched.submit([fake_spool.add("a@src.test", ["b@dst.test"]) for _ in range(10)])
        await settle(sched, lambda: not fake_spool.envs)
        span = dlv.calls[-1][3] - dlv.calls[0][3]
        assert 0.4 <= span < 1.5  # 10 messages at 20/s: 9 gaps of 50 ms

    run(t())


def test_hold_queues_but_delivers_nothing_until_reload(fake_spool: FakeSpool) -> None:
    async def t() -> None:
        sched, dlv, _ = build(fake_spool, lambda d, e, i: OK, hold=True)
        feeder = Feeder(sched, interval=0.05)
        task = asyncio.get_running_loop().create_task(feeder.run())
        sched.submit([fake_spool.add("a@src.test", ["b@dst.test"]) for _ in range(5)])
        await asyncio.sleep(0.3)
        assert dlv.calls == [] and len(fake_spool.envs) == 5
        sched.reload(make_cfg(hold=False))
        feeder.wake()
        await settle(sched, lambda: not fake_spool.envs)
        assert len(dlv.calls) == 5
        task.cancel()

    run(t())


def test_reload_reaches_every_deliverer(fake_spool: FakeSpool) -> None:
    """A SIGHUP's configuration goes to the remote, local and feedback deliverers, not only
    to the scheduler: their ports, TLS, timeouts, DNS and [local] settings change too."""

    async def t() -> None:
        remote, local, feedback = (FakeDeliverer(lambda d, e, i: OK) for _ in range(3))
        service = await start_delivery(make_cfg(hold=True), fake_spool, remote, local, feedback=feedback)
        new = make_cfg(hold=True, port=2526)
        service.reload(new)
        await service.stop()
        assert [d.reloaded for d in (remote, local, feedback)] == [[new]] * 3
        assert service.scheduler.cfg is new

    run(t())


def test_retry_then_success_through_the_feeder(fake_spool: FakeSpool) -> None:
    tries: dict[str, int] = {}

    def script(d: Any, e: Any, i: int) -> Any:
        tries[e.id] = tries.get(e.id, 0) + 1
        return TEMP if tries[e.id] < 3 else OK

    async def t() -> None:
        sched, dlv, logs = build(fake_spool, script, retry_schedule=["0.1s"])
        feeder = Feeder(sched, interval=0.05)
        task = asyncio.get_running_loop().create_task(feeder.run())
        sched.submit([fake_spool.add("a@src.test", ["b@dst.test"])])
        await settle(sched, lambda: not fake_spool.envs)
        assert [r["event"] for r in logs.records] == ["deferred", "deferred", "delivered"]
        assert [r["attempt"] for r in logs.records] == [1, 2, 3]
        task.cancel()

    run(t())


def test_expiry_bounces_with_4_4_7(fake_spool: FakeSpool) -> None:
    async def t() -> None:
        sched, _, logs = build(fake_spool, lambda d, e, i: TEMP, max_queue_lifetime="10s")
        env = fake_spool.add("a@src.test", ["b@dst.test"], arrived=time.time() - 11)
        sched.submit([env])
        await settle(sched, lambda: not fake_spool.envs)
        assert logs.events("expired")[0]["rcpt"] == "b@dst.test"
        msg = email.message_from_bytes(fake_spool.dsns[0][1], policy=email.policy.default)
        rcpt_block = list(msg.iter_parts())[1].get_payload()[1]
        assert rcpt_block["Status"] == "4.4.7" and rcpt_block["Action"] == "failed"
        assert "451 4.3.0 try later" in rcpt_block["Diagnostic-Code"]

    run(t())


def test_retry_is_pulled_in_to_the_expiry_time(fake_spool: FakeSpool) -> None:
    async def t() -> None:
        sched, _, _ = build(
            fake_spool, lambda d, e, i: TEMP, max_queue_lifetime="100s", retry_schedule=["1h"]
        )
        env = fake_spool.add("a@src.test", ["b@dst.test"], arrived=time.time() - 50)
        sched.submit([env])
        await settle(sched, lambda: fake_spool.updates >= 1)
        assert abs(fake_spool.envs[env.id].next_attempt - (env.arrived + 100)) < 0.01

    run(t())


def test_notify_success_and_delay_and_never(fake_spool: FakeSpool) -> None:
    async def t() -> None:
        sched, _, _ = build(fake_spool, lambda d, e, i: OK if d.key == "ok.test" else TEMP)
        sched.submit([fake_spool.add("a@src.test", ["x@ok.test"], notify="SUCCESS", ENVID="env-1")])
        sched.submit([fake_spool.add("a@src.test", ["x@late.test"], notify="DELAY,FAILURE")])
        sched.submit([fake_spool.add("a@src.test", ["x@ok.test", "y@late.test"], notify="NEVER")])
        await settle(sched, lambda: fake_spool.updates >= 3)
        actions = []
        for _, body in fake_spool.dsns:
            msg = email.message_from_bytes(body, policy=email.policy.default)
            blocks = list(msg.iter_parts())[1].get_payload()
            actions.append((blocks[1]["Action"], blocks[0].get("Original-Envelope-Id")))
        assert sorted(actions, key=str) == sorted([("relayed", "env-1"), ("delayed", None)], key=str)

    run(t())


def test_admin_bounce_state_sends_dsn_without_delivery(fake_spool: FakeSpool) -> None:
    async def t() -> None:
        sched, dlv, logs = build(fake_spool, lambda d, e, i: OK)
        env = fake_spool.add("a@src.test", ["b@dst.test"], tenant="acme")
        stored = fake_spool.envs[env.id]
        stored.rcpts[0].state = "bounce"
        stored.rcpts[0].last_error = "550 5.0.0 Message deleted from the queue by the administrator"
        feeder = Feeder(sched)
        assert await feeder.scan() == 1
        await settle(sched, lambda: not fake_spool.envs)
        assert dlv.calls == []
        [line] = logs.events("bounced")
        assert line["code"] == 550 and line["tenant"] == "acme"  # the bounce is the tenant's, as any other
        assert b"deleted from the queue by the administrator" in fake_spool.dsns[0][1]

    run(t())


def test_memory_bound_and_feeder_paging(fake_spool: FakeSpool) -> None:
    async def t() -> None:
        dlv = FakeDeliverer(lambda d, e, i: OK)
        sched = Scheduler(make_cfg(), fake_spool, dlv, None, LogSink(), max_in_memory=10)  # type: ignore[arg-type]
        feeder = Feeder(sched, interval=0.05)
        envs = [fake_spool.add("a@src.test", [f"b@d{i % 40}.test"]) for i in range(100)]
        sched.submit(envs)
        assert len(sched.rounds) == 10 and sched.overflow  # memory full (each destination may hold 1)
        task = asyncio.get_running_loop().create_task(feeder.run())
        peak = 0
        while fake_spool.envs:
            peak = max(peak, len(sched.rounds))
            await asyncio.sleep(0.005)
        assert peak <= 10
        assert len(dlv.calls) == 100
        task.cancel()

    run(t())


def test_vanished_message_is_tolerated(fake_spool: FakeSpool) -> None:
    async def t() -> None:
        sched, _, _ = build(fake_spool, lambda d, e, i: TEMP)
        env = fake_spool.add("a@src.test", ["b@dst.test"])
        sched.submit([env])
        del fake_spool.envs[env.id]  # `fastmta queue delete` from another process
        await settle(sched, lambda: fake_spool.updates >= 1)
        assert await Feeder(sched).scan() == 0

    run(t())


def test_shard_of_is_stable() -> None:
    assert shard_of("example.test", 8) == shard_of("example.test", 8)
    assert {shard_of(f"d{i}.test", 8) for i in range(100)} == set(range(8))


def test_a_huge_backlog_for_one_destination_does_not_crowd_out_others(fake_spool: FakeSpool) -> None:
    gate = asyncio.Event()

    script = gated(gate)

    async def t() -> None:
        dlv = FakeDeliverer(script)
        sched = Scheduler(
            make_cfg(max_connections_per_destination=2), fake_spool, dlv, None, LogSink(), max_in_memory=16
        )  # type: ignore[arg-type]
        feeder = Feeder(sched, interval=0.05)
        task = asyncio.get_running_loop().create_task(feeder.run())
        sched.submit([fake_spool.add("a@src.test", ["b@slow.test"]) for _ in range(60)])
        assert len(sched.rounds) == sched.dest_cap == 16 // 4
        fake_spool.add("a@src.test", ["b@fast.test"])  # only in the spool: the feeder must find it
        fast = [fake_spool.add("a@src.test", ["c@fast.test"]) for _ in range(5)]
        sched.submit(fast)
        deadline = time.monotonic() + 10  # ms when it works; starved would be forever
        while sum(e.rcpts[0].addr.endswith("fast.test") for e in fake_spool.envs.values()):
            assert time.monotonic() < deadline, "fast destination starved by the slow backlog"
            await asyncio.sleep(0.01)
        assert len(sched.rounds) <= sched.dest_cap
        gate.set()
        while fake_spool.envs:
            dq = sched.shards[shard_of("slow.test", len(sched.shards))].dests.get("slow.test")
            assert dq is None or len(dq.ready) + dq.inflight <= sched.dest_cap
            await asyncio.sleep(0.01)
        assert len(dlv.calls) == 66
        task.cancel()

    run(t(), timeout=20)


def test_queue_gauges(fake_spool: FakeSpool) -> None:
    from fastmta import metrics

    gate = asyncio.Event()

    script = gated(gate, key=None)

    def gauge(state: str) -> float:
        return float(metrics.queue_messages.labels(state)._value.get())

    async def t() -> None:
        sched, _, _ = build(fake_spool, script, max_connections_per_destination=2)
        feeder = Feeder(sched, count=fake_spool.count)
        sched.submit([fake_spool.add("a@src.test", ["b@dst.test"]) for _ in range(5)])
        fake_spool.add("a@src.test", ["b@later.test"])  # queued, not in memory
        await asyncio.sleep(0.05)
        feeder.update_gauges()
        assert (gauge("ready"), gauge("inflight"), gauge("deferred")) == (3, 2, 1)
        gate.set()
        await settle(sched, lambda: len(fake_spool.envs) == 1)
        feeder.update_gauges()
        assert (gauge("ready"), gauge("inflight"), gauge("deferred")) == (0, 0, 1)

    run(t())


def test_bounce_whose_dsn_cannot_be_queued_stays_queued(fake_spool: FakeSpool) -> None:
    from fastmta.errors import SpoolFullError

    async def full(env: Any, body: bytes) -> None:
        raise SpoolFullError()

    async def t() -> None:
        sched, _, logs = build(fake_spool, lambda d, e, i: USER_UNKNOWN)
        fake_spool.put = full  # type: ignore[method-assign]
        env = fake_spool.add("a@src.test", ["b@dst.test"])
        sched.submit([env])
        await settle(sched, lambda: fake_spool.updates >= 1)
        stored = fake_spool.envs[env.id]
        assert stored.rcpts[0].state == "pending" and stored.rcpts[0].last_error.startswith("550 5.1.1")
        assert stored.next_attempt > time.time() + 0.5  # retried later, bounced (with a DSN) then

    run(t())


def test_feeder_pass_is_bounded_and_resumes_behind_a_parked_backlog(fake_spool: FakeSpool) -> None:
    from fastmta.scheduler import feeder as feeder_mod

    gate = asyncio.Event()

    script = gated(gate)

    async def t() -> None:
        dlv = FakeDeliverer(script)
        sched = Scheduler(make_cfg(), fake_spool, dlv, None, LogSink(), max_in_memory=16)  # type: ignore[arg-type]
        feeder = Feeder(sched)
        backlog = feeder_mod.MISSES + 500
        for _ in range(backlog):
            fake_spool.add("a@src.test", ["b@slow.test"])
        fast = fake_spool.add("a@src.test", ["b@fast.test"])
        reads = 0
        real_envelopes = fake_spool.envelopes

        def counting(msg_ids: list[str]) -> Any:
            nonlocal reads
            reads += len(msg_ids)
            return real_envelopes(msg_ids)

        fake_spool.envelopes = counting  # type: ignore[method-assign]
        assert await feeder.scan() == sched.dest_cap  # then MISSES reads for a full destination end it
        # read in batches no bigger than what the pass could still take: little read for nothing
        assert sched.dest_cap + feeder_mod.MISSES <= reads <= sched.max_in_memory + feeder_mod.MISSES
        assert fast.id not in sched.rounds
        passes = 1
        while fast.id not in sched.rounds:  # each pass resumes behind the last one
            await feeder.scan()
            passes += 1
            assert passes <= backlog // feeder_mod.MISSES + 2
        assert reads <= backlog + 1 + passes * sched.max_in_memory  # every envelope read about once
        reads = 0
        await feeder.scan()  # known-parked messages cost no envelope read
        assert reads == 0
        gate.set()
        await settle(sched, lambda: True)

    run(t())


def test_feeder_reads_envelopes_in_batches(fake_spool: FakeSpool) -> None:
    from fastmta.scheduler import feeder as feeder_mod

    async def t() -> None:
        sched, dlv, _ = build(fake_spool, lambda d, e, i: OK)
        sched.held = True  # nothing delivered while the pages are read
        n = 2 * feeder_mod.READ + 1
        for i in range(n):
            fake_spool.add("a@src.test", [f"b@d{i % 7}.test"])
        sched.held = False
        assert await Feeder(sched).scan() == n
        assert fake_spool.envelope_reads == 3  # one read transaction per READ envelopes, not per message
        await settle(sched, lambda: not fake_spool.envs)
        assert len(dlv.calls) == n

    run(t())


def test_route_next_hop_groups_domains_into_one_transaction(fake_spool: FakeSpool) -> None:
    async def t() -> None:
        dlv = FakeDeliverer(lambda d, e, i: OK)
        cfg = config.from_dict(
            {
                "hostname": "mx.fastmta.test",
                "route": [{"domain": "*", "nexthop": "127.0.0.9:2626"}],
                "policy": {"local_domains": ["here.test"]},
            }
        )
        sched = Scheduler(cfg, fake_spool, dlv, dlv, LogSink())  # type: ignore[arg-type]
        sched.submit([fake_spool.add("a@src.test", ["x@one.test", "y@two.test", "z@here.test"])])
        await settle(sched, lambda: not fake_spool.envs)
        assert sorted((c[0], tuple(c[2])) for c in dlv.calls) == [
            ("[127.0.0.9]:2626", (0, 1)),
            ("local", (2,)),
        ]

    run(t())


def test_suspension_longer_than_the_lifetime_expires_at_the_lifetime(fake_spool: FakeSpool) -> None:
    async def t() -> None:
        sched, _, logs = build(
            fake_spool,
            lambda d, e, i: REFUSED,
            max_queue_lifetime="100s",
            shaping=[{"match": "refused", "action": "suspend", "duration": "1h"}],
        )
        env = fake_spool.add("a@src.test", ["b@dead.test"], arrived=time.time() - 40)
        sched.submit([env])
        await settle(sched, lambda: fake_spool.updates >= 1)
        assert abs(fake_spool.envs[env.id].next_attempt - (env.arrived + 100)) < 0.01
        assert logs.events("expired") == []

    run(t())


def test_shaping_limit_lowers_the_message_rate(fake_spool: FakeSpool) -> None:
    slow_down = Deferred(Reply(451, "4.7.28", "rate limited"), "rate_limited")
    first = [True]

    def script(d: Any, e: Any, i: int) -> Any:
        if first[0]:
            first[0] = False
            return slow_down
        return OK

    async def t() -> None:
        rule = {
            "match": "4\\.7\\.28",
            "action": "limit",
            "message_rate": 20,
            "max_connections": 5,
            "duration": "1h",
        }
        sched, dlv, _ = build(fake_spool, script, shaping=[rule])
        sched.submit([fake_spool.add("a@src.test", ["b@gmail.test"])])
        await settle(sched, lambda: bool(dlv.calls))
        sched.submit([fake_spool.add("a@src.test", ["b@gmail.test"]) for _ in range(10)])
        await settle(sched, lambda: len(dlv.calls) == 11)
        span = dlv.calls[-1][3] - dlv.calls[1][3]
        assert span >= 0.4  # 10 messages at 20/s; unlimited before the rule matched

    run(t())


def test_dsn_to_a_utf8_sender_travels_with_smtputf8(fake_spool: FakeSpool) -> None:
    async def t() -> None:
        sched, _, _ = build(fake_spool, lambda d, e, i: USER_UNKNOWN)
        sched.submit([fake_spool.add("älice@src.test", ["b@dst.test"], SMTPUTF8="")])
        await settle(sched, lambda: not fake_spool.envs)
        dsn_env, body = fake_spool.dsns[0]
        assert "SMTPUTF8" in dsn_env.params and dsn_env.rcpts[0].addr == "älice@src.test"
        assert "To: <älice@src.test>".encode() in body

    run(t())


def test_operator_suspension_defers_untried_until_resumed(fake_spool: FakeSpool) -> None:
    """``DeliveryService.suspend``/``resume`` (the admin API's call): node-local without Redis."""

    async def t() -> None:
        sched, dlv, logs = build(fake_spool, lambda d, e, i: OK)
        sched.suspend("DST.test.", 3600, "maintenance at the receiver")
        sched.submit([fake_spool.add("a@src.test", ["b@dst.test"])])
        await settle(sched, lambda: fake_spool.updates >= 1)
        assert dlv.calls == []
        (rec,) = logs.events("deferred")
        assert (rec["code"], rec["enhanced"], rec["bounce_class"]) == (451, "4.7.1", "policy")
        assert "maintenance at the receiver" in rec["response"]
        sched.resume("dst.test")
        env = next(iter(fake_spool.envs.values()))
        sched.submit([env])
        await settle(sched, lambda: not fake_spool.envs)
        assert [c[0] for c in dlv.calls] == ["dst.test"]

    run(t())


def test_shared_state_suspends_limits_and_lifts(fake_spool: FakeSpool) -> None:
    """What the cluster heartbeat reports: other nodes' suspensions and limits apply here,
    and a suspension that vanished before its end was resumed elsewhere."""
    from fastmta.errors import Reply

    async def t() -> None:
        sched, dlv, logs = build(fake_spool, lambda d, e, i: OK)
        sched.apply_shared({"dst.test": (60.0, Reply(421, "4.7.28", "TSS04"), "rate_limited")},
                           {"lim.test": (60.0, 1, 5.0)})  # fmt: skip
        sched.submit([fake_spool.add("a@src.test", ["b@dst.test", "c@lim.test"])])
        await settle(sched, lambda: fake_spool.updates >= 1)
        assert [c[0] for c in dlv.calls] == ["lim.test"]
        assert logs.events("deferred")[0]["bounce_class"] == "rate_limited"
        queues = {k: dq for s in sched.shards for k, dq in s.dests.items()}
        assert queues["lim.test"].connections(time.time()) == 1  # kept: its limit has not ended
        assert queues["dst.test"].suspended(time.time())
        sched.apply_shared({}, {})
        assert not queues["dst.test"].suspended(time.time())

    run(t())
