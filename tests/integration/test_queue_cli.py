# SPDX-License-Identifier: MIT
"""``fastmta queue …`` as a real command, against a stopped spool and a live one."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fastmta import config
from fastmta.spool import Envelope, Recipient, Spool
from tests.fixtures.spool import Holder, message_body
from tests.support import run_fastmta, wait_until

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
LIST_KEYS = ["id", "from", "rcpts", "size", "attempts", "arrived", "next_attempt", "last_error"]


def fill(cfg_path: Path, specs: list[dict[str, Any]]) -> list[str]:
    """Queue messages through the real spool (then stop it)."""
    cfg = config.load(str(cfg_path))

    async def main() -> list[str]:
        spool = Spool.open(cfg.spool)
        await spool.start()
        puts = []
        for n, spec in enumerate(specs):  # ids follow call order: list order = specs order
            rcpts = [Recipient(a) for a in spec.get("rcpts", ["r@dst.test"])]
            env = Envelope("", spec.get("from", f"s{n}@src.test"), rcpts, params={"BODY": "8BITMIME"},
                           next_attempt=spec.get("next_attempt", 0.0))  # fmt: skip
            puts.append(spool.put(env, spec.get("body", message_body(n, 600))))
        ids = list(await asyncio.gather(*puts))
        await spool.aclose()
        return ids

    return asyncio.run(asyncio.wait_for(main(), 60))


def q(cfg_path: Path, *args: str) -> tuple[int, str, str]:
    r = run_fastmta("queue", *args, "--config", str(cfg_path))
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def listed(cfg_path: Path) -> dict[str, dict[str, Any]]:
    rc, out, err = q(cfg_path, "list", "--json")
    assert rc == 0, err
    return {row["id"]: row for row in map(json.loads, out.splitlines())}


@pytest.fixture
def cfg_path(make_config: Callable[..., Path]) -> Path:
    return make_config()


def test_list_show_stats_on_a_stopped_spool(cfg_path: Path) -> None:
    later = time.time() + 3600
    ids = fill(cfg_path, [{"from": "alice@src.test", "rcpts": ["a@x.test", "b@y.test"]},
                          {"next_attempt": later}, {}])  # fmt: skip
    rows = listed(cfg_path)
    assert list(rows) == ids  # arrival order
    first = rows[ids[0]]
    assert list(first) == LIST_KEYS
    assert first["from"] == "alice@src.test" and first["rcpts"] == ["a@x.test", "b@y.test"]
    assert first["size"] == len(message_body(0, 600)) and first["attempts"] == 0 and first["last_error"] == ""
    assert ISO.match(first["arrived"]) and ISO.match(first["next_attempt"])
    assert rows[ids[1]]["next_attempt"] > rows[ids[0]]["next_attempt"]

    rc, out, _ = q(cfg_path, "list")
    lines = out.splitlines()
    assert rc == 0 and len(lines) == 1 + len(ids)  # a heading, then one line per message
    assert lines[0].split()[-2:] == ["Rcpts", "Sender"]
    assert lines[1].split()[0] == ids[0] and lines[1].split()[-2:] == ["2", "<alice@src.test>"]

    rc, out, _ = q(cfg_path, "show", ids[0])
    assert rc == 0 and "Subject: msg 0" in out and "BODY=8BITMIME" in out and "<a@x.test> pending" in out
    assert message_body(0, 600).split(b"\r\n\r\n")[1][:40].decode() not in out  # headers only
    rc, out, _ = q(cfg_path, "show", ids[0], "--json")
    doc = json.loads(out)
    assert doc["id"] == ids[0] and doc["params"] == {"BODY": "8BITMIME"}
    assert "Subject: msg 0" in doc["headers"]
    assert [r["state"] for r in doc["recipients"]] == ["pending", "pending"]

    rc, out, _ = q(cfg_path, "stats", "--json")
    st = json.loads(out)
    assert st["messages"] == 3 and st["recipients"]["pending"] == 4 and st["due_now"] == 2
    assert st["new"] == 3 and st["bytes"] == sum(r["size"] for r in rows.values())
    assert ISO.match(st["oldest_arrived"]) and st["map_used_bytes"] > 0 and st["quarantined"] == 0
    assert st["map_free_bytes"] >= 0 and st["map_high_water_bytes"] >= st["map_used_bytes"]
    rc, out, _ = q(cfg_path, "stats")
    assert rc == 0 and "messages:" in out


def test_flush_delete_bounce_on_a_stopped_spool(cfg_path: Path) -> None:
    later = time.time() + 3600
    ids = fill(cfg_path, [{"next_attempt": later, "rcpts": ["a@slow.test"]},
                          {"next_attempt": later, "rcpts": ["b@other.test"]},
                          {"next_attempt": later}, {"next_attempt": later}])  # fmt: skip
    rc, _, err = q(cfg_path, "flush", "--domain", "SLOW.test")
    done = time.time()  # the flush made it due at some moment before this (however slow its start)
    assert rc == 0 and "flushed 1 message" in err
    rows = listed(cfg_path)
    assert rows[ids[0]]["next_attempt"] <= time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(done + 1))
    assert rows[ids[1]]["next_attempt"] > time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(done + 1800))

    rc, _, err = q(cfg_path, "flush", ids[1])
    assert rc == 0 and "flushed 1 message" in err

    rc, _, err = q(cfg_path, "delete", ids[2], "0000000000000000")
    assert rc == 1 and "0000000000000000: not in the queue" in err and "deleted 1 message" in err
    assert ids[2] not in listed(cfg_path)

    rc, _, err = q(cfg_path, "bounce", ids[3])
    assert rc == 0
    rc, out, _ = q(cfg_path, "show", ids[3], "--json")
    doc = json.loads(out)
    assert [r["state"] for r in doc["recipients"]] == ["bounce"]
    assert "5.0.0" in doc["recipients"][0]["last_error"] and doc["next_attempt_ts"] <= time.time()
    assert listed(cfg_path)[ids[3]]["rcpts"] == ["r@dst.test"]  # still the queue's business

    rc, _, err = q(cfg_path, "flush")  # everything
    assert rc == 0 and "flushed 3 messages" in err


def test_usage_errors_and_missing_spool(
    cfg_path: Path, make_config: Callable[..., Path], tmp_path: Path
) -> None:
    assert q(cfg_path, "delete", "../../etc/passwd")[0] == 64
    assert q(cfg_path, "frobnicate")[0] == 64
    assert q(cfg_path, "flush", "0000000000000000", "--domain", "x.test")[0] == 64
    empty = make_config(f'[spool]\npath = "{tmp_path / "nothing"}"\n', name="empty.toml")
    assert q(empty, "list", "--json") == (0, "", "")
    rc, out, _ = q(empty, "stats", "--json")
    assert rc == 0 and json.loads(out)["messages"] == 0
    assert q(empty, "delete", "0000000000000000")[0] == 1
    assert not (tmp_path / "nothing").exists()


def test_list_streams_a_big_queue(cfg_path: Path) -> None:
    fill(cfg_path, [{"body": b"x\r\n"}] * 2500)
    rows = listed(cfg_path)
    assert len(rows) == 2500


def test_live_spool_sees_flush_and_delete_within_a_second(
    cfg_path: Path, spool_holder: Callable[..., Holder], tmp_path: Path
) -> None:
    later = time.time() + 3600
    ids = fill(cfg_path, [{"next_attempt": later} for _ in range(4)])
    seen = tmp_path / "seen"
    spool_dir = config.load(str(cfg_path)).spool.path
    h = spool_holder("feed", spool_dir, str(seen))
    wait_until(lambda: seen.exists() and "ready" in seen.read_text(), 30, "feeder")
    time.sleep(0.3)
    assert "due " not in seen.read_text()

    rc, _, err = q(cfg_path, "flush", ids[0])
    assert rc == 0, err
    # The holder looks every 0.1 s, so this takes a tenth of a second; the bound leaves a
    # loaded machine room (a reader that never saw other processes' commits would wait forever).
    took = wait_until(lambda: f"due {ids[0]}" in seen.read_text(), what="the flushed message to be due")
    assert took < 3.0

    rc, _, err = q(cfg_path, "delete", ids[1])
    assert rc == 0, err
    took = wait_until(lambda: f"gone {ids[1]}" in seen.read_text(), what="the delete to be seen")
    assert took < 3.0

    rows = listed(cfg_path)  # reading beside a live writer
    assert set(rows) == {ids[0], ids[2], ids[3]}
    rc, out, _ = q(cfg_path, "stats", "--json")
    assert json.loads(out)["messages"] == 3
    assert "Traceback" not in h.stop()


def test_queue_commands_steer_a_running_server(tmp_path: Path, sinks: Callable[..., Any]) -> None:
    """Real ``fastmta serve``: deferred mail is listed, a delete is honoured, a flush delivers now."""
    import smtplib

    from tests.fixtures.server import running
    from tests.support import free_port

    sink_port = free_port()
    sink = sinks("127.0.0.1", sink_port, rcpt_default="451 4.3.0 try again later")
    extra = f"""
    [delivery]
    retry_schedule = ["1h"]
    [[route]]
    domain = "*"
    nexthop = "127.0.0.1:{sink_port}"
    """
    with running(tmp_path / "srv", extra) as srv:
        cfg_path = srv.proc.config_path
        with smtplib.SMTP(srv.host, srv.port, timeout=30) as s:
            for n in range(3):
                s.sendmail(f"s{n}@src.test", [f"r{n}@dst.test"], message_body(n, 2000))

        def deferred() -> bool:
            rows = listed(cfg_path).values()
            return len(rows) == 3 and all(r["attempts"] >= 1 and "451" in r["last_error"] for r in rows)

        wait_until(deferred, 30, "three deferred messages")
        rows = listed(cfg_path)
        assert all(r["next_attempt"] > r["arrived"] for r in rows.values())
        doomed = next(i for i, r in rows.items() if r["from"] == "s1@src.test")
        bounced = next(i for i, r in rows.items() if r["from"] == "s2@src.test")
        rc, _, err = q(cfg_path, "delete", doomed)
        assert rc == 0, err
        sink.script.rcpt_default = None  # the next hop accepts now
        rc, _, err = q(cfg_path, "bounce", bounced)
        assert rc == 0, err
        t0 = time.monotonic()
        rc, _, err = q(cfg_path, "flush")  # the bounced one may be gone already: 1 or 2
        assert rc == 0 and "flushed" in err
        got = sink.wait_messages(2, timeout=30)
        took = time.monotonic() - t0
        # The feeder looks once a second; the retry would be in an hour. Slack for a loaded machine.
        assert took < 15, f"flush took {took:.1f}s to reach the next hop"
        by_from = {m.mail_from: m for m in got}
        assert set(by_from) == {"s0@src.test", "<>"}, by_from  # s0 delivered, s2 bounced: a DSN from <>
        assert by_from["<>"].rcpt_tos == ["s2@src.test"] and b"5.0.0" in by_from["<>"].data
        wait_until(lambda: listed(cfg_path) == {}, what="the queue to empty")
        time.sleep(0.5)
        assert len(sink.messages) == 2  # the deleted message never went out


def test_damaged_record_is_reported_not_fatal(cfg_path: Path) -> None:
    import lmdb

    ids = fill(cfg_path, [{}, {}, {}])
    env = lmdb.open(config.load(str(cfg_path)).spool.path, max_dbs=8)
    with env.begin(write=True) as txn:
        txn.put(ids[1].encode(), b"\x01" + b"\x00" * 40, db=env.open_db(b"env", txn=txn))
    env.close()
    rc, out, err = q(cfg_path, "list", "--json")
    assert rc == 0 and f"{ids[1]}: damaged record" in err
    assert [json.loads(line)["id"] for line in out.splitlines()] == [ids[0], ids[2]]
    rc, _, err = q(cfg_path, "show", ids[1])
    assert rc == 1 and "damaged" in err and "Traceback" not in err
    rc, out, _ = q(cfg_path, "stats", "--json")
    assert json.loads(out)["damaged"] == 1 and json.loads(out)["messages"] == 2
