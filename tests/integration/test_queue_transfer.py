# SPDX-License-Identifier: MIT
"""``fastmta queue transfer --to HOST:PORT [--domain D]``: drain a running node into another.

Node A runs (its next hop defers everything, so mail sits in its queue); node B is a
second real ``fastmta serve`` holding what it gets, or a slow recording sink when the
test kills the transfer mid-way. A message leaves A only after B's 250; a ``kill -9``
of the transfer loses nothing (duplicates allowed).
"""

from __future__ import annotations

import signal
import smtplib
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fixtures.server import Running, running
from tests.integration.test_queue_cli import listed, q
from tests.support import fastmta_cmd, free_port, wait_until

DEFERRING = """
[delivery]
retry_schedule = ["1h"]
[[route]]
domain = "*"
nexthop = "127.0.0.1:{port}"
"""


def queue_on_a(srv: Running, mails: list[tuple[str, list[str]]]) -> None:
    """Send to node A and wait until every message was tried and deferred."""
    with smtplib.SMTP(srv.host, srv.port, timeout=30) as s:
        for n, (sender, rcpts) in enumerate(mails):
            s.sendmail(sender, rcpts, f"Subject: m{n}\r\nMessage-ID: <m{n}@a.test>\r\n\r\nbody {n}\r\n")
    cfg = srv.proc.config_path

    def deferred() -> bool:
        rows = listed(cfg).values()
        return len(rows) == len(mails) and all(r["attempts"] >= 1 for r in rows)

    wait_until(deferred, 60, "every message deferred on node A")


def subjects(srv: Running) -> dict[str, bytes]:
    bodies = srv.bodies().values()
    return {body.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode(): body for body in bodies}


def test_transfer_drains_a_running_node(tmp_path: Path, sinks: Callable[..., Any]) -> None:
    port = free_port()
    sinks("127.0.0.1", port, rcpt_default="451 4.3.0 try again later")
    mails = [(f"s{n}@src.test", [f"r{n}@dst.test", f"x{n}@other.test"]) for n in range(12)]
    with running(tmp_path / "a", DEFERRING.format(port=port)) as a, running(tmp_path / "b") as b:
        queue_on_a(a, mails)
        cfg_a = a.proc.config_path
        # --domain moves only those recipients; the messages stay for their other recipient
        rc, _, err = q(cfg_a, "transfer", "--to", f"{b.host}:{b.port}", "--domain", "dst.test")
        assert rc == 0, err
        assert "transferred 0 messages (12 recipients)" in err
        rows = listed(cfg_a)
        assert len(rows) == 12
        assert all(r["rcpts"] == ["x" + r["from"][1:].replace("src", "other")] for r in rows.values())
        rc, _, err = q(cfg_a, "transfer", "--to", f"{b.host}:{b.port}")
        assert rc == 0, err
        assert "transferred 12 messages (12 recipients)" in err
        assert listed(cfg_a) == {}
        rows_b = listed(b.proc.config_path)
        assert len(rows_b) == 24  # one copy per transfer run, each with the recipients it moved
        assert sorted(r for row in rows_b.values() for r in row["rcpts"]) == sorted(
            addr for _, rs in mails for addr in rs
        )
        assert sorted(subjects(b)) == sorted(f"m{n}" for n in range(12))


def test_transfer_to_a_node_that_refuses_keeps_the_mail(tmp_path: Path, sinks: Callable[..., Any]) -> None:
    port, other = free_port(), free_port()
    sinks("127.0.0.1", port, rcpt_default="451 4.3.0 try again later")
    sinks("127.0.0.1", other, rcpt={"r1@dst.test": "550 5.1.1 no such user"})
    with running(tmp_path / "a", DEFERRING.format(port=port)) as a:
        queue_on_a(a, [("s0@src.test", ["r0@dst.test"]), ("s1@src.test", ["r1@dst.test"])])
        rc, _, err = q(a.proc.config_path, "transfer", "--to", f"127.0.0.1:{other}")
        assert rc == 1 and "left" in err and "r1@dst.test" in err and "550 5.1.1" in err
        assert [r["rcpts"] for r in listed(a.proc.config_path).values()] == [["r1@dst.test"]]
        rc, _, err = q(a.proc.config_path, "transfer", "--to", f"127.0.0.1:{free_port()}")  # nobody there
        assert rc == 75 and "Connection refused" in err
        assert len(listed(a.proc.config_path)) == 1


def test_kill_9_during_a_transfer_loses_nothing(tmp_path: Path, sinks: Callable[..., Any]) -> None:
    port, other = free_port(), free_port()
    sinks("127.0.0.1", port, rcpt_default="451 4.3.0 try again later")
    slow = sinks("127.0.0.1", other, delay=0.05)  # 4 round trips per message: about 0.2 s each
    n = 40
    with running(tmp_path / "a", DEFERRING.format(port=port)) as a:
        queue_on_a(a, [(f"s{i}@src.test", [f"r{i}@dst.test"]) for i in range(n)])
        cfg_a = a.proc.config_path
        proc = subprocess.Popen(fastmta_cmd("queue", "transfer", "--to", f"127.0.0.1:{other}",
                                            "--config", str(cfg_a)), stderr=subprocess.PIPE)  # fmt: skip
        wait_until(lambda: len(slow.messages) >= 5, 60, "the transfer to be under way")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert proc.stderr is not None
        proc.stderr.close()
        arrived = {m.rcpt_tos[0] for m in slow.messages}
        still = {r["rcpts"][0] for r in listed(cfg_a).values()}
        assert 5 <= len(arrived) < n
        assert arrived | still == {f"r{i}@dst.test" for i in range(n)}  # each one somewhere
        # the rest goes with the next run (a message taken just before the kill may go twice)
        slow.script.delay = 0
        rc, _, err = q(cfg_a, "transfer", "--to", f"127.0.0.1:{other}")
        assert rc == 0, err
        assert listed(cfg_a) == {}
        assert {m.rcpt_tos[0] for m in slow.messages} == {f"r{i}@dst.test" for i in range(n)}
        assert len(slow.messages) <= n + 1
