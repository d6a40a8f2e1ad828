# SPDX-License-Identifier: MIT
"""Delivery metrics after real deliveries to a real (aiosmtpd) next hop: the dashboard's numbers."""

from __future__ import annotations

import smtplib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.metrics import scrape, value
from tests.fixtures.sink import Sink
from tests.support import fastmta_server, free_port, wait_until

pytestmark = pytest.mark.timeout(90)

GOOD = 5


def test_deliveries_by_result_and_class(make_config: Callable[..., Path], sinks: Callable[..., Sink],
                                        sink_port: int) -> None:  # fmt: skip
    sink = sinks("127.0.0.2", sink_port, rcpt={"bad@dest.test": "550 5.1.1 No such user",
                                               "later@dest.test": "451 4.3.0 Try again later"})  # fmt: skip
    smtp_port, metrics_port = free_port(), free_port()
    cfg = make_config(f"""
        [[listener]]
        name = "mx"
        address = "127.0.0.1:{smtp_port}"

        [delivery]
        tls = "none"
        idle_timeout = "1s"

        [[route]]
        domain = "*"
        nexthop = "127.0.0.2:{sink_port}"

        [metrics]
        address = "127.0.0.1:{metrics_port}"
        """)  # fmt: skip
    with (
        fastmta_server(cfg, ("127.0.0.1", smtp_port)),
        smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as smtp,
    ):
        for _ in range(GOOD):
            smtp.sendmail("", ["good@dest.test"], b"Subject: ok\r\n\r\nbody\r\n")  # <>: no DSN traffic
        smtp.sendmail("", ["bad@dest.test"], b"Subject: bad\r\n\r\nbody\r\n")
        smtp.sendmail("", ["later@dest.test"], b"Subject: later\r\n\r\nbody\r\n")

        def text() -> str:
            return scrape(("127.0.0.1", metrics_port))

        wait_until(lambda: value(text(), "fastmta_deliveries_total") == GOOD + 2, timeout=30,
                   what="every first attempt finished")  # fmt: skip
        t = text()
        assert value(t, "fastmta_deliveries_total", result="delivered") == GOOD
        assert value(t, "fastmta_deliveries_total", result="bounced") == 1
        assert value(t, "fastmta_deliveries_total", result="deferred") == 1
        assert value(t, "fastmta_delivery_failures_total", result="bounced") == 1
        assert value(t, "fastmta_delivery_failures_total", result="deferred") == 1
        assert value(t, "fastmta_delivery_seconds_count") >= 1
        assert value(t, "fastmta_delivery_connections_total", result="ok") >= 1
        assert len(sink.wait_messages(GOOD)) == GOOD
        # Pooled connections close after idle_timeout; the gauge follows.
        wait_until(lambda: value(text(), "fastmta_destination_connections_active") == 0, timeout=20,
                   what="outbound connections back to 0")  # fmt: skip
        # The deferred message waits in the queue for its retry.
        wait_until(lambda: value(text(), "fastmta_queue_messages", state="deferred") == 1, timeout=30,
                   what="one deferred message in the queue gauge")  # fmt: skip
