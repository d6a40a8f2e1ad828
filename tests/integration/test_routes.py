# SPDX-License-Identifier: MIT
"""``[[route]]`` end to end: a real ``fastmta serve`` and aiosmtpd next hops on loopback.

Route domains match whatever case or trailing dot they were written with, and a next
hop written without a port is reached on ``[delivery] port``. DNS points at a dead
port: mail that missed its route would sit deferred instead of reaching a sink.
"""

from __future__ import annotations

import smtplib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.sink import Sink
from tests.support import fastmta_server, free_port, traced_message

pytestmark = pytest.mark.timeout(90)


def _routed(make_config: Callable[..., Path], sinks: Callable[..., Sink], sink_port: int,
            routes: list[tuple[str, str, str]]) -> None:  # fmt: skip
    """Serve with ``routes`` (domain, nexthop, a recipient for it); each recipient's mail
    must reach the sink at its route's nexthop address."""
    port = free_port()
    text = f'[[listener]]\naddress = "127.0.0.1:{port}"\n[delivery]\ntls = "none"\nport = {sink_port}\n'
    text += "".join(f'[[route]]\ndomain = "{d}"\nnexthop = "{hop}"\n' for d, hop, _ in routes)
    boxes = [sinks(hop.partition(":")[0], sink_port) for _, hop, _ in routes]
    cfg = make_config(text)
    with fastmta_server(cfg, ("127.0.0.1", port)), smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        for _, _, rcpt in routes:
            c.sendmail("", [rcpt], traced_message(0))
        for box, (_, _, rcpt) in zip(boxes, routes, strict=True):
            assert box.wait_messages(1, timeout=20)[0].rcpt_tos == [rcpt]


def test_route_domains_match_whatever_their_case_and_trailing_dot(
    make_config: Callable[..., Path], sinks: Callable[..., Sink], sink_port: int
) -> None:
    routes = [("Example.COM", f"127.0.0.2:{sink_port}", "a@example.com"),
              ("example.net.", f"127.0.0.3:{sink_port}", "b@EXAMPLE.net")]  # fmt: skip
    _routed(make_config, sinks, sink_port, routes)


def test_a_port_less_nexthop_takes_the_delivery_port(
    make_config: Callable[..., Path], sinks: Callable[..., Sink], sink_port: int
) -> None:
    _routed(make_config, sinks, sink_port, [("portless.test", "127.0.0.4", "c@portless.test")])
