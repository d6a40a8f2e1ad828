# SPDX-License-Identifier: MIT
"""The spool API on a real LMDB environment and a real writer process (integration: it
spawns writer processes and moves a 50 MiB message, so it is not a sub-second unit file)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Any

import lmdb
import pytest

from fastmta import metrics
from fastmta.config import SpoolConfig
from fastmta.errors import SpoolFullError, SpoolUnavailableError
from fastmta.spool import Envelope, RcptState, Recipient, Spool, records
from fastmta.spool.ids import ID_LEN
from fastmta.spool.store import sched_key
from tests.fixtures.spool import message_body

MakeCfg = Callable[..., SpoolConfig]


def run(coro: Awaitable[Any], timeout: float = 60.0) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(main())


def env(n: int = 0, rcpts: int = 1, **kw: Any) -> Envelope:
    return Envelope("", f"s{n}@src.test", [Recipient(f"r{n}.{i}@dst.test") for i in range(rcpts)], **kw)


async def started(cfg: SpoolConfig) -> Spool:
    spool = Spool.open(cfg)
    await spool.start()
    return spool


def raw_keys(path: str) -> dict[str, list[bytes]]:
    """Every key of every database, read with a separate environment."""
    e = lmdb.open(path, max_dbs=8, readonly=True, lock=False)
    try:
        out = {}
        with e.begin() as txn:
            for name in (b"env", b"body", b"sched", b"quar"):
                out[name.decode()] = list(txn.cursor(e.open_db(name, txn=txn)).iternext(values=False))
        return out
    finally:
        e.close()


def test_put_read_due_and_reopen(spool_cfg: MakeCfg) -> None:
    seen: list[str] = []

    async def main() -> list[str]:
        spool = await started(spool_cfg())
        spool.on_commit(lambda envs: seen.extend(e.id for e in envs))
        bodies = {i: message_body(i, 1000 + i) for i in range(50)}
        puts = [spool.put(env(i, params={"BODY": "8BITMIME"}), bodies[i]) for i in range(50)]
        ids = await asyncio.gather(*puts)
        for i, msg_id in enumerate(ids):
            e = spool.envelope(msg_id)
            assert e is not None and e.sender == f"s{i}@src.test" and e.size == len(bodies[i])
            assert e.params == {"BODY": "8BITMIME"} and e.rcpts[0].state == "pending"
            assert spool.body(msg_id) == bodies[i]
        due = spool.due(time.time() + 1, 1000)
        assert sorted(m for _, m in due) == sorted(ids)
        assert [d for d, _ in due] == sorted(d for d, _ in due)
        await spool.aclose()
        return list(ids)

    ids = run(main())
    assert sorted(seen) == sorted(ids)
    spool = Spool.open(spool_cfg())
    try:
        assert spool.recovery.messages == 50 and spool.recovery.quarantined == 0
        assert all(spool.body(i) == message_body(n, 1000 + n) for n, i in enumerate(ids))
    finally:
        spool.close()


def test_put_resolves_only_when_committed(spool_cfg: MakeCfg) -> None:
    """The writer is another process: what this process reads was committed there."""

    async def main() -> None:
        spool = await started(spool_cfg())
        try:
            for i in range(20):
                msg_id = await spool.put(env(i), b"x" * 100)
                assert spool.store.envelope_raw(msg_id.encode()) is not None
                assert spool.store.body(msg_id.encode()) == b"x" * 100
        finally:
            await spool.aclose()

    run(main())


def test_put_then_calls_back_after_the_listeners_in_the_same_acknowledgement(spool_cfg: MakeCfg) -> None:
    """The receive path's put: no Future and no loop hop between the commit's news and
    the callback; the on_commit listeners (the delivery log) have seen the message
    first, and one failing callback does not keep the rest of its batch waiting."""

    async def main() -> None:
        spool = await started(spool_cfg())
        seen: list[str] = []
        calls: list[tuple[str, BaseException | None, bool]] = []
        spool.on_commit(lambda envs: seen.extend(e.id for e in envs))
        loop = asyncio.get_running_loop()
        all_done = loop.create_future()

        def done(e: Envelope, exc: BaseException | None) -> None:
            calls.append((e.id, exc, e.id in seen))
            if len(calls) == 20:
                all_done.set_result(None)
            if len(calls) == 1:
                raise RuntimeError("a bug in one waiter")

        try:
            envs = [env(i) for i in range(20)]
            for e in envs:
                spool.put_then(e, b"x" * 100, b"", lambda exc, e=e: done(e, exc))
            await asyncio.wait_for(all_done, 30)
            assert sorted(c[0] for c in calls) == sorted(e.id for e in envs)
            assert all(exc is None and listened for _, exc, listened in calls)
            assert all(spool.body(e.id) == b"x" * 100 for e in envs)
            # Writer death: every callback still in flight is told, none is lost.
            committer = spool._committer
            assert committer is not None and committer._proc is not None
            committer._proc.kill()
            failed: list[BaseException | None] = []
            for i in range(10):
                spool.put_then(env(100 + i), b"y", b"", failed.append)
            deadline = time.monotonic() + 30
            while len(failed) < 10:
                assert time.monotonic() < deadline, "callbacks lost with the writer"
                await asyncio.sleep(0.01)
            assert all(r is None or isinstance(r, SpoolUnavailableError) for r in failed)
        finally:
            await spool.aclose()

    run(main())


def test_update_remove_reschedule(spool_cfg: MakeCfg) -> None:
    async def main() -> None:
        spool = await started(spool_cfg())
        msg_id = await spool.put(env(1, rcpts=3), b"body\r\n")
        later = time.time() + 3600
        states = {0: RcptState("done"), 1: RcptState("pending", "451 4.3.0 later")}
        assert await spool.update(msg_id, states, later)
        e = spool.envelope(msg_id)
        assert e is not None and [r.state for r in e.rcpts] == ["done", "pending", "pending"]
        assert e.attempts == 1 and e.rcpts[1].attempts == 1 and e.rcpts[1].last_error == "451 4.3.0 later"
        assert e.last_error == "451 4.3.0 later" and e.next_attempt == later
        assert spool.due(time.time(), 10) == []
        assert [m for _, m in spool.due(later + 1, 10)] == [msg_id]
        assert await spool.reschedule(msg_id, time.time() - 1)
        assert [m for _, m in spool.due(time.time(), 10)] == [msg_id]
        assert await spool.update(msg_id, {1: "failed"}, None, attempts_inc=0)
        assert spool.envelope(msg_id).rcpts[1].state == "failed"  # type: ignore[union-attr]
        with pytest.raises(RuntimeError):
            await spool.update(msg_id, {2: "nonsense"}, None)
        assert await spool.update(msg_id, {2: RcptState("done")}, None)  # nothing pending: gone
        assert spool.envelope(msg_id) is None and spool.body(msg_id) is None
        assert spool.due(time.time() + 1e6, 10) == []
        assert not await spool.update(msg_id, {0: "done"}, None)
        assert not await spool.remove(msg_id)
        other = await spool.put(env(2), b"x")
        assert await spool.remove(other) and spool.envelope(other) is None
        await spool.aclose()
        assert all(not v for v in raw_keys(spool.cfg.path).values())

    run(main())


def test_count_is_the_number_of_queued_messages(spool_cfg: MakeCfg) -> None:
    async def main() -> None:
        spool = await started(spool_cfg())
        assert spool.count() == 0
        ids = await asyncio.gather(*(spool.put(env(i), b"x\r\n") for i in range(7)))
        assert spool.count() == 7
        assert await spool.remove(ids[0]) and await spool.update(ids[1], {0: "done"}, None)
        assert spool.count() == 5
        await spool.aclose()

    run(main())


def test_envelopes_and_update_many_in_batches(spool_cfg: MakeCfg) -> None:
    async def main() -> None:
        spool = await started(spool_cfg())
        ids = list(await asyncio.gather(*(spool.put(env(i), b"x\r\n") for i in range(5))))
        got = spool.envelopes([ids[3], "0000000000000000", ids[0]])  # one read transaction, in order
        assert [e and e.sender for e in got] == ["s3@src.test", None, "s0@src.test"]
        assert spool.envelopes([]) == []
        later = time.time() + 3600
        futures = spool.update_many([(ids[0], {0: "done"}, None),
                                     (ids[1], {0: RcptState("pending", "451 x")}, later),
                                     ("0000000000000000", {0: "done"}, None)])  # fmt: skip
        assert not any(isinstance(f, asyncio.Task) for f in futures)  # plain futures: no Task each
        assert await asyncio.gather(*futures) == [True, True, False]
        assert spool.envelope(ids[0]) is None
        e1 = spool.envelope(ids[1])
        assert e1 is not None and e1.next_attempt == later and e1.attempts == 1 and e1.last_error == "451 x"
        await spool.aclose()

    run(main())


def test_due_pages_with_after(spool_cfg: MakeCfg) -> None:
    async def main() -> None:
        spool = await started(spool_cfg())
        base = time.time() - 100
        ids = await asyncio.gather(*(spool.put(env(i, next_attempt=base + i % 7), b"x") for i in range(60)))
        got: list[tuple[float, str]] = []
        after = None
        while page := spool.due(time.time(), 8, after):
            got.extend(page)
            after = page[-1]
        assert sorted(m for _, m in got) == sorted(ids) and len(got) == 60
        assert got == sorted(got)
        await spool.aclose()

    run(main())


def test_due_pages_of_one_never_repeat(spool_cfg: MakeCfg) -> None:
    """Regression: int(ms) keys did not survive the float round trip for ~1 % of times."""
    import random

    async def main() -> None:
        spool = await started(spool_cfg())
        rnd = random.Random(7)
        due_times = [rnd.uniform(1, 1.7e9) for _ in range(300)]  # 3 of these broke int() keys
        puts = [spool.put(env(i, next_attempt=t), b"x") for i, t in enumerate(due_times)]
        ids = await asyncio.gather(*puts)
        got, after = [], None
        while page := spool.due(time.time(), 1, after):
            got.append(page[0][1])
            after = page[0]
            assert len(got) <= 300, "pagination repeats itself"
        assert sorted(got) == sorted(ids)
        await spool.aclose()

    run(main())


def test_fifty_mib_message_and_growth_from_a_tiny_map(spool_cfg: MakeCfg) -> None:
    big = os.urandom(1024) * (50 * 1024)  # 50 MiB

    async def main() -> None:
        spool = await started(spool_cfg(map_size=1024**2))
        small = [spool.put(env(i), message_body(i, 20000)) for i in range(200)]
        msg_id = await spool.put(env(99), big)
        await asyncio.gather(*small)
        assert spool.body(msg_id) == big
        assert spool.store.map_size() > 50 * 1024**2
        assert await spool.remove(msg_id)
        assert spool.body(msg_id) is None
        await spool.aclose()
        assert not [k for k in raw_keys(spool.cfg.path)["body"] if k[:ID_LEN] == msg_id.encode()]

    run(main(), timeout=120)


def test_ceiling_fails_only_what_does_not_fit(spool_cfg: MakeCfg) -> None:
    async def main() -> None:
        spool = await started(spool_cfg(map_size=1024**2, max_map_size=12 * 1024**2))
        ok: list[str] = []
        full: list[str] = []
        for _ in range(6):  # concurrent batches mixing sizes: some fit, some do not
            envs = [env(i) for i in range(12)]
            sizes = [300_000 if i % 3 else 2_000 for i in range(12)]
            puts = [spool.put(e, b"y" * s) for e, s in zip(envs, sizes, strict=True)]
            results = await asyncio.gather(*puts, return_exceptions=True)
            for e, r in zip(envs, results, strict=True):
                if isinstance(r, SpoolFullError):
                    full.append(e.id)
                else:
                    assert r == e.id, r
                    ok.append(e.id)
        assert ok and full
        assert SpoolFullError().code == 452 and SpoolFullError().enhanced == "4.3.1"
        assert spool.unhealthy_reason() is not None
        for msg_id in ok:
            assert spool.envelope(msg_id) is not None and spool.body(msg_id) is not None
        await spool.aclose()
        keys = raw_keys(spool.cfg.path)
        for msg_id in full:  # nothing half-written
            b = msg_id.encode()
            assert b not in keys["env"] and not [k for k in keys["body"] if k[:ID_LEN] == b]
            assert not [k for k in keys["sched"] if k[8:] == b]
        assert len(keys["env"]) == len(ok) == len(keys["sched"])

    run(main(), timeout=120)


def test_full_disk_fails_puts_cleanly_and_recovers(spool_cfg: MakeCfg) -> None:
    """ENOSPC-like: the writer's file-size limit (EFBIG) stands in for a full disk."""

    async def main() -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (3 * 1024**2, hard))  # inherited by the writer only
        try:
            spool = Spool.open(spool_cfg(map_size=64 * 1024**2))
            await spool.start()
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        small = await spool.put(env(1), b"small\r\n")
        results = await asyncio.gather(*(spool.put(env(i), b"z" * 400_000) for i in range(10)),
                                       return_exceptions=True)  # fmt: skip
        assert any(isinstance(r, SpoolFullError) for r in results), results
        assert all(isinstance(r, (str, SpoolFullError)) for r in results), results
        assert await spool.remove(small)
        assert await spool.put(env(2), b"still works\r\n")
        stored = [r for r in results if isinstance(r, str)]
        await spool.aclose()
        keys = raw_keys(spool.cfg.path)
        assert len(keys["env"]) == len(stored) + 1 == len(keys["sched"])

    run(main(), timeout=120)


def test_files_are_private_whatever_the_umask(spool_cfg: MakeCfg) -> None:
    old = os.umask(0)
    try:
        spool = Spool.open(spool_cfg())
    finally:
        os.umask(old)
    spool.close()
    path = spool.cfg.path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    for name in ("data.mdb", "lock.mdb"):
        assert stat.S_IMODE(os.stat(os.path.join(path, name)).st_mode) == 0o600


def _fill(cfg: SpoolConfig, n: int) -> list[str]:
    async def main() -> list[str]:
        spool = await started(cfg)
        ids = await asyncio.gather(*(spool.put(env(i), message_body(i, 500)) for i in range(n)))
        await spool.aclose()
        return list(ids)

    return list(run(main()))


def test_recovery_quarantines_a_damaged_record(spool_cfg: MakeCfg) -> None:
    ids = _fill(spool_cfg(), 10)
    bad = ids[3].encode()
    e = lmdb.open(spool_cfg().path, max_dbs=8)
    with e.begin(write=True) as txn:
        raw = bytearray(txn.get(bad, db=e.open_db(b"env", txn=txn)))
        raw[12] ^= 0xFF
        txn.put(bad, bytes(raw), db=e.open_db(b"env", txn=txn))
        txn.put(b"short", b"junk", db=e.open_db(b"env", txn=txn))
    e.close()
    before = metrics.spool_quarantined_total._value.get()
    spool = Spool.open(spool_cfg())
    try:
        assert spool.recovery.quarantined == 2 and spool.recovery.messages == 9
        assert metrics.spool_quarantined_total._value.get() - before == 2
        assert spool.envelope(ids[3]) is None
        assert ids[3] not in [m for _, m in spool.due(time.time() + 1, 100)]
        assert all(spool.envelope(i) is not None for i in ids if i != ids[3])
        with spool.store.read() as txn:
            assert txn.get(bad, db=spool.store.quar) == bytes(raw)
        assert spool.body(ids[3]) is not None  # kept for forensics
    finally:
        spool.close()
    again = Spool.open(spool_cfg())
    assert again.recovery.quarantined == 0 and again.recovery.messages == 9
    again.close()


def test_recovery_repairs_the_schedule_index(spool_cfg: MakeCfg) -> None:
    ids = _fill(spool_cfg(), 5)
    e = lmdb.open(spool_cfg().path, max_dbs=8)
    with e.begin(write=True) as txn:
        envs, sched = e.open_db(b"env", txn=txn), e.open_db(b"sched", txn=txn)
        lost = ids[1].encode()
        txn.delete(sched_key(records.next_attempt_of(txn.get(lost, db=envs)), lost), db=sched)
        txn.put(sched_key(5.0, b"0000000000000000"), b"", db=sched)  # an orphan
    e.close()
    spool = Spool.open(spool_cfg())
    try:
        assert spool.recovery.rescheduled == 1 and spool.recovery.orphan_schedule == 1
        assert sorted(m for _, m in spool.due(time.time() + 1, 100)) == sorted(ids)
    finally:
        spool.close()


def test_damaged_record_found_at_run_time_is_quarantined(spool_cfg: MakeCfg) -> None:
    async def main() -> None:
        spool = await started(spool_cfg())
        msg_id = await spool.put(env(1), b"x")
        with spool.store.write() as txn:
            txn.put(msg_id.encode(), b"\x01garbage-garbage-garbage-garbage-garbage", db=spool.store.envs)
        assert spool.envelope(msg_id) is None
        deadline = time.monotonic() + 30
        while True:
            with spool.store.read() as txn:
                if txn.get(msg_id.encode(), db=spool.store.quar) is not None:
                    break
            assert time.monotonic() < deadline, "not quarantined"
            await asyncio.sleep(0.01)
        await spool.aclose()

    run(main())


def test_writer_death_fails_in_flight_puts_and_restarts(spool_cfg: MakeCfg) -> None:
    async def main() -> None:
        spool = await started(spool_cfg())
        assert await spool.put(env(0), b"before")
        committer = spool._committer
        assert committer is not None and committer._proc is not None
        committer._proc.kill()
        results = await asyncio.gather(*(spool.put(env(i), b"x" * 1000) for i in range(50)),
                                       return_exceptions=True)  # fmt: skip
        assert all(isinstance(r, (str, SpoolUnavailableError)) for r in results)
        deadline = time.monotonic() + 30
        while True:  # a new writer comes up by itself
            try:
                msg_id = await spool.put(env(1), b"after")
                break
            except SpoolUnavailableError:
                assert time.monotonic() < deadline, "writer never restarted"
                await asyncio.sleep(0.1)
        assert spool.body(msg_id) == b"after" and spool.unhealthy_reason() is None
        await spool.aclose()

    run(main())


def test_health_and_lifecycle(spool_cfg: MakeCfg) -> None:
    async def main() -> None:
        spool = Spool.open(spool_cfg())
        assert spool.unhealthy_reason() == "spool not running"
        with pytest.raises(SpoolUnavailableError):
            await spool.put(env(0), b"x")
        await spool.start()
        assert spool.unhealthy_reason() is None
        stats = spool.stats()
        assert stats["used_bytes"] > 0 and stats["map_size_bytes"] >= 4 * 1024**2
        fut = spool.put(env(1), b"x")
        spool.close()  # without waiting: the put fails or completes, it never hangs
        with contextlib.suppress(SpoolUnavailableError):
            await fut
        assert spool.unhealthy_reason() == "spool not running"
        with pytest.raises(SpoolUnavailableError):
            await spool.put(env(2), b"x")

    run(main())


def test_bodies_of_every_boundary_size_round_trip(spool_cfg: MakeCfg) -> None:
    from fastmta.spool.store import CHUNK, PAGE

    sizes = [0, 1, 2000, PAGE - 17, PAGE - 16, PAGE - 15, PAGE, PAGE + 1, 2 * PAGE, 3 * PAGE - 16 + 900,
             CHUNK - 1, CHUNK, CHUNK + 1, CHUNK + PAGE, 2 * CHUNK + 5]  # fmt: skip

    async def main() -> None:
        spool = await started(spool_cfg())
        bodies = {n: os.urandom(n) for n in sizes}
        ids = {n: await spool.put(env(n), b) for n, b in bodies.items()}
        for n, msg_id in ids.items():
            assert spool.body(msg_id) == bodies[n], n
        assert await spool.remove(ids[2 * CHUNK + 5])
        assert spool.body(ids[2 * CHUNK + 5]) is None and spool.body(ids[CHUNK + 1]) == bodies[CHUNK + 1]
        await spool.aclose()

    run(main())


def test_a_spool_of_another_schema_is_refused(spool_cfg: MakeCfg) -> None:
    Spool.open(spool_cfg()).close()
    e = lmdb.open(spool_cfg().path, max_dbs=8)
    with e.begin(write=True) as txn:
        txn.put(b"schema", b"99", db=e.open_db(b"meta", txn=txn))
    e.close()
    for _ in range(2):  # the failed open leaves nothing open behind it
        with pytest.raises(lmdb.Error, match="schema"):
            Spool.open(spool_cfg())


def test_writer_keeps_a_zeroed_runway_that_recovery_ignores(spool_cfg: MakeCfg) -> None:
    """The file runs ahead of LMDB's last page (commits then flush data only); the
    zeros past it are never read: every message comes back after a reopen."""
    from fastmta.spool.writer import RUNWAY_STEP

    async def main() -> dict[str, bytes]:
        spool = await started(spool_cfg(map_size=64 * 1024**2))
        stored = {}
        for i in range(5):  # several batches: the runway grows by one step after each
            body = os.urandom(3000 + i)
            stored[await spool.put(env(i), body)] = body
        size = os.path.getsize(os.path.join(spool.cfg.path, "data.mdb"))
        assert size - spool.store.high_water() >= RUNWAY_STEP
        await spool.aclose()
        return stored

    stored = run(main())
    spool = Spool.open(spool_cfg(map_size=64 * 1024**2))
    try:
        assert (spool.recovery.messages, spool.recovery.quarantined) == (5, 0)
        assert {m: spool.body(m) for m in stored} == stored
    finally:
        spool.close()
