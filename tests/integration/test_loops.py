# SPDX-License-Identifier: MIT
"""Mail loops, end to end: real ``fastmta serve`` processes, smtplib and raw clients, dnsmasq,
an aiosmtpd sink that receives the bounces.

A next hop that is the server itself (a route, or an MX pointing back at a listener)
bounces at once with 5.4.6; two servers routing to each other (a loop no single
server can see) stop at ``[limits] max_hops``; a message arriving with more than
``max_hops`` trace fields is refused ``554 5.4.6``, one with exactly that many is not.
"""

from __future__ import annotations

import smtplib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.dns import Dnsmasq
from tests.fixtures.server import RawClient, Running, queued_id
from tests.fixtures.sink import Sink
from tests.support import ServerProcess, fastmta_server, free_port, traced_message, wait_until

pytestmark = pytest.mark.timeout(120)

SENDER = "alice@src.test"
# (Received:, Delivered-To:, accepted) at and past the default max_hops of 50
EDGES = ((50, 0, True), (51, 0, False), (48, 2, True), (49, 2, False))


def _loop_config(port: int, routes: dict[str, str], spool: Path, extra: str = "") -> str:
    """A listener on ``port``, delivery without TLS retried every second, the ``routes``
    (domain → nexthop), ``extra`` sections, and the spool at ``spool``."""
    text = f'[[listener]]\naddress = "127.0.0.1:{port}"\n{extra}\n'
    if "[delivery]" not in extra:
        text += '[delivery]\ntls = "none"\nretry_schedule = ["1s"]\n'
    for domain, nexthop in routes.items():
        text += f'[[route]]\ndomain = "{domain}"\nnexthop = "{nexthop}"\n'
    return text + f'[spool]\npath = "{spool}"\nmap_size = "64MiB"\n'


def _bounce_of(sink: Sink) -> bytes:
    """The one DSN the sender's sink got (null sender, to the original sender)."""
    dsn = sink.wait_messages(1, timeout=30)[0]
    assert dsn.mail_from in ("", "<>") and dsn.rcpt_tos == [SENDER]
    return dsn.data


def _hops(*servers: ServerProcess, rcpt: str = "bob@loop.test") -> int:
    """Times the message was received, across ``servers``."""
    return sum(1 for srv in servers for e in srv.events("received") if e["rcpt"] == rcpt)


def test_route_to_ourselves_bounces_at_once(
    make_config: Callable[..., Path], sinks: Callable[..., Sink], sink_port: int, tmp_path: Path
) -> None:
    port = free_port()
    src = sinks("127.0.0.2", sink_port)
    routes = {"loop.test": f"127.0.0.1:{port}", "src.test": f"127.0.0.2:{sink_port}"}
    cfg = make_config(_loop_config(port, routes, tmp_path / "spool"))
    with fastmta_server(cfg, ("127.0.0.1", port)) as srv, smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.sendmail(SENDER, ["bob@loop.test"], traced_message(0))
        data = _bounce_of(src)
        wait_until(lambda: bool(srv.events("bounced")), what="the bounce in the log")
        [bounced] = srv.events("bounced")
        assert _hops(srv) == 1  # received from the client, never from ourselves
    assert (bounced["rcpt"], bounced["code"], bounced["enhanced"]) == ("bob@loop.test", 554, "5.4.6")
    assert bounced["bounce_class"] == "loop"
    assert bounced["response"] == "mail for loop.test loops back to myself"
    assert b"Status: 5.4.6" in data and b"loops back to myself" in data


def test_mx_pointing_back_at_us_bounces(
    make_config: Callable[..., Path],
    dnsmasq: Callable[..., Dnsmasq],
    sinks: Callable[..., Sink],
    sink_port: int,
    tmp_path: Path,
) -> None:
    """A relay domain whose MX is this server on the ``[delivery] port``: an outside client's
    message bounces with 5.4.6 instead of going round."""
    port = free_port()
    src = sinks("127.0.0.2", sink_port)
    dns = dnsmasq(mx=[("self.test", "mx.self.test", 10)], hosts={"mx.self.test": "127.0.0.1"})
    extra = f"""
        [policy]
        relay_networks = []
        relay_domains = ["self.test"]

        [delivery]
        port = {port}
        tls = "none"
        retry_schedule = ["1s"]

        [dns]
        nameservers = ["{dns.address}"]
        timeout = "1s"
    """
    cfg = make_config(_loop_config(port, {"src.test": f"127.0.0.2:{sink_port}"}, tmp_path / "spool", extra))
    with fastmta_server(cfg, ("127.0.0.1", port)) as srv, smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.sendmail(SENDER, ["bob@self.test"], traced_message(0))
        data = _bounce_of(src)
        wait_until(lambda: bool(srv.events("bounced")), what="the bounce in the log")
        [bounced] = srv.events("bounced")
        assert _hops(srv, rcpt="bob@self.test") == 1
    assert (bounced["enhanced"], bounced["bounce_class"]) == ("5.4.6", "loop")
    assert bounced["response"] == "mail for self.test loops back to myself"
    assert b"Status: 5.4.6" in data


def test_two_servers_routing_to_each_other_stop_at_max_hops(
    make_config: Callable[..., Path], sinks: Callable[..., Sink], sink_port: int, tmp_path: Path
) -> None:
    """Neither server is its own next hop, so only the hop count can end this loop: the
    receiver of hop max_hops + 1 refuses it 554 5.4.6 and the sender bounces it."""
    max_hops = 6
    pa, pb = free_port(), free_port()
    src = sinks("127.0.0.2", sink_port)
    cfgs = []
    for name, port, peer in (("a", pa, pb), ("b", pb, pa)):
        routes = {"loop.test": f"127.0.0.1:{peer}", "src.test": f"127.0.0.2:{sink_port}"}
        text = _loop_config(port, routes, tmp_path / name, f"[limits]\nmax_hops = {max_hops}\n")
        cfgs.append(make_config(text, f"{name}.toml"))
    with (
        fastmta_server(cfgs[0], ("127.0.0.1", pa)) as a,
        fastmta_server(cfgs[1], ("127.0.0.1", pb)) as b,
        smtplib.SMTP("127.0.0.1", pa, timeout=30) as c,
    ):
        c.sendmail(SENDER, ["bob@loop.test"], traced_message(0))
        data = _bounce_of(src)
        assert _hops(a, b) == max_hops + 1  # the client's hop, then max_hops relays
        [bounced] = a.events("bounced") + b.events("bounced")
    assert (bounced["code"], bounced["enhanced"], bounced["bounce_class"]) == (554, "5.4.6", "loop")
    assert b"Status: 5.4.6" in data and b"Too many hops" in data


@pytest.mark.parametrize("bdat", [False, True], ids=["DATA", "BDAT"])
def test_max_hops_at_reception(fastmta_module_server: Running, bdat: bool) -> None:
    """Exactly max_hops (50) Received:/Delivered-To: fields are accepted, 51 are refused with
    554 5.4.6, and the session goes on."""
    srv = fastmta_module_server
    with RawClient(srv.host, srv.port) as c:
        c.cmd(b"EHLO client.test")
        for received, delivered_to, accepted in EDGES:
            text = traced_message(received, delivered_to)
            c.cmd(b"MAIL FROM:<a@src.test>")
            c.cmd(b"RCPT TO:<b@src.test>")
            if bdat:
                c.send(b"BDAT %d LAST\r\n" % len(text) + text)
                reply = c.reply()
            else:
                assert c.cmd(b"DATA").startswith(b"354")
                reply = c.cmd(text + b".")
            if accepted:
                assert srv.body(queued_id(reply)).endswith(text), (received, delivered_to)
            else:
                assert reply == b"554 5.4.6 Too many hops: message refused as a mail loop\r\n"
        assert c.cmd(b"NOOP").startswith(b"250")
