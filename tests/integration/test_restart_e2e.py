# SPDX-License-Identifier: MIT
"""kill -9 and restart a real ``fastmta serve``: every accepted message is delivered (at least once)."""

from __future__ import annotations

import smtplib
import time
from pathlib import Path
from typing import Any

from tests.support import ServerProcess, free_port, wait_until

HOST = "127.0.0.2"


def config(make_config: Any, port: int, sink_port: int, name: str, extra: str = "") -> Path:
    return make_config(
        f"""
        [[listener]]
        address = "127.0.0.1:{port}"

        [delivery]
        tls = "none"
        retry_schedule = ["1s"]
        {extra}

        [[route]]
        domain = "*"
        nexthop = "{HOST}:{sink_port}"
    """,
        name=name,
    )


def inject(port: int, n: int) -> list[str]:
    subjects = [f"msg-{i}" for i in range(n)]
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        for s in subjects:
            c.sendmail("a@src.test", [f"{s}@dst.test"], f"Subject: {s}\r\n\r\nbody\r\n".encode())
    return subjects


def subjects_of(sink: Any) -> set[str]:
    out = set()
    for m in sink.messages:
        for line in m.data.split(b"\r\n"):
            if line.startswith(b"Subject: "):
                out.add(line[9:].decode())
    return out


def wait_subjects(sink: Any, want: set[str]) -> None:
    wait_until(lambda: want <= subjects_of(sink), what=f"{len(want)} subjects at the sink")


def test_queued_on_hold_then_kill9_then_delivered_after_restart(
    make_config: Any, sinks: Any, sink_port: int
) -> None:
    sink = sinks(HOST, sink_port)
    port = free_port()
    held = ServerProcess(
        config(make_config, port, sink_port, "held.toml", "hold = true"), ("127.0.0.1", port)
    )
    try:
        want = set(inject(port, 30))
        time.sleep(0.3)
        assert sink.messages == []
        held.kill9()
    finally:
        held.stop()
    server = ServerProcess(config(make_config, port, sink_port, "live.toml"), ("127.0.0.1", port))
    try:
        wait_subjects(sink, want)
    finally:
        server.stop()


def test_kill9_in_the_middle_of_delivery(make_config: Any, sinks: Any, sink_port: int) -> None:
    sink = sinks(HOST, sink_port, delay=0.1)  # 40 messages take seconds: the kill lands mid-delivery
    port = free_port()
    cfg = config(make_config, port, sink_port, "f.toml", "max_connections_per_destination = 2")
    first = ServerProcess(cfg, ("127.0.0.1", port))
    try:
        want = set(inject(port, 40))
        wait_until(lambda: len(sink.messages) >= 3, what="the first deliveries")
        first.kill9()
    finally:
        first.stop()
    assert len(subjects_of(sink)) < 40, "everything was delivered before the kill: the test proves nothing"
    sink.script.delay = 0.0
    second = ServerProcess(cfg, ("127.0.0.1", port))
    try:
        wait_subjects(sink, want)
        time.sleep(0.5)
        lines = second.log_lines()
        assert sum('"event":"delivered"' in ln for ln in lines) <= 40
    finally:
        second.stop()


def test_hold_then_sighup_lifts_it(make_config: Any, sinks: Any, sink_port: int) -> None:
    import signal

    sink = sinks(HOST, sink_port)
    port = free_port()
    path = config(make_config, port, sink_port, "hold.toml", "hold = true")
    server = ServerProcess(path, ("127.0.0.1", port))
    try:
        want = set(inject(port, 10))
        time.sleep(1.2)  # a feeder pass goes by: hold means nothing leaves
        assert sink.messages == []
        config(make_config, port, sink_port, "hold.toml")  # same file, hold gone
        server.signal(signal.SIGHUP)
        wait_subjects(sink, want)
    finally:
        server.stop()
