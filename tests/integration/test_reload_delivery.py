# SPDX-License-Identifier: MIT
"""SIGHUP reaches the delivery side: a running ``fastmta serve`` sends the next message with
the reloaded ``[delivery] port`` (MX hosts from dnsmasq) and ``[local] maildir``."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fixtures.mta import Env
from tests.support import ServerProcess, free_port, wait_until


def test_sighup_moves_delivery_to_the_new_port_and_maildir(
    make_config: Callable[..., Path], dnsmasq: Any, sinks: Any, tmp_path: Path
) -> None:
    dns = dnsmasq(mx=[("a.test", "mx.a.test", 10)], hosts={"mx.a.test": "127.0.0.2"})
    old_sink, new_sink = (sinks("127.0.0.2", free_port("127.0.0.2")) for _ in range(2))
    port = free_port()

    def write(sink_port: int, maildir: Path) -> Path:
        return make_config(f"""
            [[listener]]
            address = "127.0.0.1:{port}"

            [policy]
            local_domains = ["local.test"]

            [delivery]
            port = {sink_port}
            tls = "none"
            retry_schedule = ["1s"]
            connect_timeout = "2s"

            [dns]
            nameservers = ["{dns.address}"]
            timeout = "1s"

            [local]
            maildir = "{maildir}"
        """)

    server = ServerProcess(write(old_sink.port, tmp_path / "old-mail"), ("127.0.0.1", port))
    try:
        env = Env(server, port, {})
        env.send(["x@a.test"], "before")
        old_sink.wait_messages(1)
        write(new_sink.port, tmp_path / "new-mail")
        server.signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in server.stderr(), 30, "the reload")
        env.send(["x@a.test", "u@local.test"], "after")
        env.wait_log(lambda rs: len([r for r in rs if r["event"] == "delivered"]) >= 3)
    finally:
        server.stop()
    [msg] = new_sink.wait_messages(1)
    assert b"Subject: after" in msg.data and len(old_sink.messages) == 1
    assert len(list((tmp_path / "new-mail" / "local.test" / "u" / "new").iterdir())) == 1
    assert not (tmp_path / "old-mail").exists()
