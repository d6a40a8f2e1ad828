# SPDX-License-Identifier: MIT
"""The scheduler on the real LMDB spool: per-recipient state survives a restart, DSNs are queued.

The deliverer is a scripted fake of our Deliverer protocol (the SMTP side has its
own tests); the spool, its committer thread and its fsyncs are real.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import time
from pathlib import Path
from typing import Any

from fastmta import config
from fastmta.deliverylog import DeliveryLog
from fastmta.errors import Bounced, Deferred, Delivered, Reply
from fastmta.scheduler.core import Scheduler
from fastmta.scheduler.feeder import Feeder
from fastmta.spool import Spool
from fastmta.spool.records import Envelope, Recipient
from tests.fixtures.scheduler import BODY, FakeDeliverer, LogSink

OK = Delivered(Reply(250, "2.0.0", "ok"))
TEMP = Deferred(Reply(451, "4.3.0", "try later"), "other")
GONE = Bounced(Reply(550, "5.1.1", "no such user"), "invalid_recipient")


def cfg_for(path: Path, **delivery: Any) -> config.Config:
    return config.from_dict(
        {
            "hostname": "mx.fastmta.test",
            "spool": {"path": str(path), "map_size": "64MiB"},
            "delivery": {"retry_schedule": ["1h"], **delivery},
        }
    )


async def drain(sched: Scheduler, spool: Spool, until: Any, timeout: float = 30.0) -> None:
    feeder = Feeder(sched, interval=0.05)
    task = asyncio.get_running_loop().create_task(feeder.run())
    deadline = time.monotonic() + timeout
    try:
        while not (until() and not sched.rounds):
            assert time.monotonic() < deadline, "scheduler did not settle"
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await sched.stop(1.0)


def test_partial_delivery_survives_restart_and_is_finished_after(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    ids: list[str] = []

    async def first_life() -> None:
        cfg = cfg_for(path)
        spool = Spool.open(cfg.spool)
        await spool.start()
        for i in range(20):
            env = Envelope("", "a@src.test", [Recipient(f"u{i}@ok.test"), Recipient(f"u{i}@slow.test")])
            ids.append(await spool.put(env, BODY))
        dlv = FakeDeliverer(lambda d, e, i: OK if d.key == "ok.test" else TEMP)
        sched = Scheduler(cfg, spool, dlv, None, LogSink())  # type: ignore[arg-type]
        spool.on_commit(sched.submit)
        await drain(sched, spool, lambda: len(dlv.calls) == 40)
        spool.close()

    async def second_life() -> None:
        cfg = cfg_for(path)
        spool = Spool.open(cfg.spool)
        await spool.start()
        assert not spool.due(time.time(), 1)
        for msg_id in ids:
            env = spool.envelope(msg_id)
            assert env is not None
            assert [r.state for r in env.rcpts] == ["done", "pending"]
            assert env.rcpts[1].last_error == "451 4.3.0 try later" and env.attempts == 1
            assert env.next_attempt > time.time() + 3000  # "1h" retry, jittered
            await spool.reschedule(msg_id, time.time())  # what `fastmta queue flush` does
        dlv = FakeDeliverer(lambda d, e, i: OK)
        logs = LogSink()
        sched = Scheduler(cfg, spool, dlv, None, logs)  # type: ignore[arg-type]
        await drain(sched, spool, lambda: all(spool.envelope(i) is None for i in ids))
        assert sorted(c[2] for c in dlv.calls) == [[1]] * 20  # only the recipient still pending
        assert all(r["attempt"] == 2 for r in logs.events("delivered"))
        spool.close()

    asyncio.run(asyncio.wait_for(first_life(), 20))
    asyncio.run(asyncio.wait_for(second_life(), 20))


def test_bounce_queues_a_dsn_that_is_delivered_in_turn(tmp_path: Path) -> None:
    async def t() -> None:
        cfg = cfg_for(tmp_path / "spool")
        spool = Spool.open(cfg.spool)
        await spool.start()
        dsns: list[bytes] = []

        def script(d: Any, e: Any, i: int) -> Any:
            if e.sender == "":
                dsns.append(spool.body(e.id) or b"")
                return OK
            return GONE

        dlv = FakeDeliverer(script)
        sched = Scheduler(cfg, spool, dlv, None, DeliveryLog(str(tmp_path / "log.jsonl")))
        spool.on_commit(sched.submit)
        env = Envelope(
            "",
            "alice@src.test",
            [Recipient("bob@dst.test", orcpt="rfc822;bob@dst.test"), Recipient("carol@dst.test")],
            params={"ENVID": "E1"},
        )
        msg_id = await spool.put(env, BODY)
        await drain(sched, spool, lambda: len(dsns) == 1)
        assert spool.envelope(msg_id) is None and not spool.due(time.time() + 1, 10)
        assert [c[0] for c in dlv.calls] == ["dst.test", "src.test"]  # the DSN went to the sender's domain
        msg = email.message_from_bytes(dsns[0], policy=email.policy.default)
        assert msg.get_content_type() == "multipart/report"
        head, *rcpts = list(msg.iter_parts())[1].get_payload()
        assert head["Original-Envelope-Id"] == "E1"
        assert [b["Final-Recipient"] for b in rcpts] == ["rfc822; bob@dst.test", "rfc822; carol@dst.test"]
        assert b"Subject: test" in dsns[0]
        log_text = (tmp_path / "log.jsonl").read_text()
        assert log_text.count('"event":"bounced"') == 2 and log_text.count('"event":"delivered"') == 1
        spool.close()

    asyncio.run(asyncio.wait_for(t(), 20))


def test_admin_bounce_from_another_process_is_acted_on(tmp_path: Path) -> None:
    async def t() -> None:
        from fastmta.spool import ops

        cfg = cfg_for(tmp_path / "spool", hold=True)
        spool = Spool.open(cfg.spool)
        await spool.start()
        dlv = FakeDeliverer(lambda d, e, i: OK)
        sched = Scheduler(cfg, spool, dlv, None, LogSink())  # type: ignore[arg-type]
        spool.on_commit(sched.submit)
        msg_id = await spool.put(Envelope("", "alice@src.test", [Recipient("bob@dst.test")]), BODY)
        with spool.store.write() as txn:  # `fastmta queue bounce ID` does this in its own process
            ops.bounce(spool.store, txn, msg_id.encode())
        sched.reload(cfg_for(tmp_path / "spool", hold=False))
        await drain(sched, spool, lambda: spool.envelope(msg_id) is None and len(dlv.calls) == 1)
        assert dlv.calls[0][0] == "src.test"  # nothing to bob; the DSN to alice
        spool.close()

    asyncio.run(asyncio.wait_for(t(), 20))
