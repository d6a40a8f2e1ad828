# SPDX-License-Identifier: MIT
"""kill -9 in the middle of a stream of puts: every acknowledged put survives, intact.

A real process holds the spool with several concurrent producers; each writes
``id sha256 size`` to a file only after ``await spool.put`` returned. It is killed
(alone, or together with its writer process) at a random moment, several times
over the same spool. After each kill the spool is reopened and every acknowledged
message must be there with its exact body, and nothing may be half-present.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from pathlib import Path

import lmdb
import pytest

from fastmta.config import SpoolConfig
from fastmta.spool import Spool, records
from fastmta.spool.ids import ID_LEN
from tests.fixtures.spool import Holder
from tests.support import wait_until


def acked(path: Path) -> dict[str, tuple[str, int]]:
    out = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            out[parts[0]] = (parts[1], int(parts[2]))
    return out


def check_spool(spool_dir: Path, must_have: dict[str, tuple[str, int]]) -> int:
    """Reopen (recovery runs) and verify; return how many messages the spool holds."""
    spool = Spool.open(SpoolConfig(path=str(spool_dir), map_size=1024**2))
    try:
        rep = spool.recovery
        assert rep.quarantined == 0 and rep.orphan_schedule == 0 and rep.rescheduled == 0, rep
        for msg_id, (digest, size) in must_have.items():
            env = spool.envelope(msg_id)
            assert env is not None, f"acknowledged message {msg_id} lost"
            body = spool.body(msg_id)
            assert body is not None and len(body) == size == env.size
            assert hashlib.sha256(body).hexdigest() == digest, f"{msg_id} body damaged"
        store = spool.store
        with store.read() as txn:  # nothing half-present: every part has its whole
            env_ids = set()
            for key, value in txn.cursor(store.envs):
                records.decode(key.decode(), value)  # decodes cleanly
                env_ids.add(key)
                assert txn.get(key + b"\x00\x00", db=store.bodies) is not None, key
            for key in txn.cursor(store.bodies).iternext(values=False):
                assert key[:ID_LEN] in env_ids, f"body chunk without envelope {key!r}"
            sched_ids = [k[8:] for k in txn.cursor(store.sched).iternext(values=False)]
            assert sorted(sched_ids) == sorted(env_ids)
        for key in env_ids:
            e = spool.envelope(key.decode())
            assert e is not None and len(spool.body(key.decode()) or b"") == e.size
        return len(env_ids)
    finally:
        spool.close()


@pytest.mark.parametrize("group", [False, True], ids=["server-only", "server-and-writer"])
def test_kill9_mid_stream_loses_no_acknowledged_put(
    tmp_path: Path, spool_holder: Callable[..., Holder], group: bool
) -> None:
    spool_dir = tmp_path / "spool"
    rnd = random.Random(1234 + group)
    all_acked: dict[str, tuple[str, int]] = {}
    for round_no in range(3):
        acks = tmp_path / f"acks{round_no}"
        h = spool_holder("produce", str(spool_dir), str(acks), "8")
        wait_until(lambda a=acks: a.exists() and len(a.read_text().splitlines()) > 60, 60, "puts")
        time.sleep(rnd.uniform(0.05, 0.6))
        h.kill9_group() if group else h.kill9()
        got = acked(acks)
        assert len(got) > 50
        all_acked.update(got)
        h.wait_group_gone()  # the orphaned writer (server-only kill) finishes its batch and exits
        held = check_spool(spool_dir, all_acked)
        assert held >= len(all_acked)
    # the file modes survive crashes too
    assert (spool_dir.stat().st_mode & 0o777) == 0o700


def test_readers_see_a_consistent_spool_while_it_is_written(
    tmp_path: Path, spool_holder: Callable[..., Holder]
) -> None:
    """Another process reading during heavy writing never sees an envelope without its body."""
    spool_dir = tmp_path / "spool"
    acks = tmp_path / "acks"
    h = spool_holder("produce", str(spool_dir), str(acks), "8")
    wait_until(lambda: acks.exists() and len(acks.read_text().splitlines()) > 20, 60, "puts")
    env = lmdb.open(str(spool_dir), max_dbs=8, readonly=True)
    try:
        envs, bodies = env.open_db(b"env", create=False), env.open_db(b"body", create=False)
        deadline = time.monotonic() + 1.5
        checked = 0
        while time.monotonic() < deadline:
            try:
                with env.begin() as txn:
                    for key in txn.cursor(envs).iternext(values=False):
                        assert txn.get(key + b"\x00\x00", db=bodies) is not None
                        checked += 1
            except lmdb.MapResizedError:
                env.set_mapsize(0)
        assert checked > 0
    finally:
        env.close()
        h.stop()


def test_two_serving_processes_share_one_spool_through_a_crash(
    tmp_path: Path, spool_holder: Callable[..., Holder]
) -> None:
    """Workers (server.workers > 1) each run their own writer on one spool; one dies mid-stream."""
    spool_dir = tmp_path / "spool"
    acks = [tmp_path / "acks-a", tmp_path / "acks-b"]
    a = spool_holder("produce", str(spool_dir), str(acks[0]), "4")
    b = spool_holder("produce", str(spool_dir), str(acks[1]), "4")
    for f in acks:
        wait_until(lambda f=f: f.exists() and len(f.read_text().splitlines()) > 40, 60, "puts from both")
    a.kill9_group()
    time.sleep(0.3)  # b keeps writing beside the dead one's leftovers
    b.stop()
    b.wait_group_gone()
    got = {**acked(acks[0]), **acked(acks[1])}
    assert check_spool(spool_dir, got) >= len(got)
