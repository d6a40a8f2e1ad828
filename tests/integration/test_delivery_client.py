# SPDX-License-Identifier: MIT
"""SmtpDeliverer against real dnsmasq and real aiosmtpd sinks on 127.0.0.x.

Each test builds the deliverer the way the scheduler does (config, a body source,
a resolver pointed at a dnsmasq it started) and checks per-recipient outcomes and
what the sinks really received.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any

import pytest
import uvloop

from fastmta import config, metrics
from fastmta.delivery import Attempt, Destination
from fastmta.delivery.smtp import SmtpDeliverer
from fastmta.errors import Bounced, Deferred, Delivered
from fastmta.spool.records import Envelope, Recipient
from tests.fixtures.sink import free_port_on
from tests.support import wait_until

BODY = b"From: a@src.test\r\nTo: b@a.test\r\nSubject: hi\r\n\r\nHello.\r\n.leading dot\r\n"

pytestmark = pytest.mark.timeout(60)


class Bodies:
    """The minimal body source a deliverer needs (the spool's ``body(id)``)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def body(self, msg_id: str) -> bytes | None:
        return self.data.get(msg_id)


def envelope(bodies: Bodies, rcpts: list[str], body: bytes = BODY, sender: str = "a@src.test",
             msg_id: str = "m1", **params: str) -> Envelope:  # fmt: skip
    bodies.data[msg_id] = body
    rs = [Recipient(r) for r in rcpts]
    return Envelope(id=msg_id, sender=sender, rcpts=rs, size=len(body), params=params)


def make_cfg(dns_address: str, port: int, **delivery: Any) -> config.Config:
    raw: dict[str, Any] = {
        "hostname": "out.fastmta.test",
        # Generous: a loaded machine must not turn a slow loopback answer into a timeout.
        "dns": {"nameservers": [dns_address], "timeout": "10s"},
        "delivery": {"port": port, "connect_timeout": "2s", "command_timeout": "30s", "tls": "none"}
        | delivery,
        "metrics": {"address": ""},
    }
    routes = raw["delivery"].pop("routes", None)
    if routes:
        raw["route"] = routes
    return config.from_dict(raw)


def run(coro_fn: Callable[[], Any], loop: str = "uvloop") -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro_fn(), 30)

    if loop == "uvloop":
        return uvloop.run(bounded())
    return asyncio.run(bounded())


async def deliver_once(cfg: config.Config, bodies: Bodies, dest: Destination, env: Envelope,
                       rcpts: list[int] | None = None) -> Attempt:  # fmt: skip
    d = SmtpDeliverer(cfg, bodies)
    try:
        return await d.deliver(dest, env, rcpts if rcpts is not None else list(range(len(env.rcpts))))
    finally:
        await d.close()


async def deliver_in_turn(cfg: config.Config, bodies: Bodies, envs: list[Envelope]) -> list[Attempt]:
    """One deliverer, the envelopes one after the other to a.test (connection reuse)."""
    d = SmtpDeliverer(cfg, bodies)
    try:
        return [await d.deliver(Destination("a.test", "a.test"), e, [0]) for e in envs]
    finally:
        await d.close()


@pytest.fixture
def zone(dnsmasq: Any) -> Any:
    """a.test: MX 10 mx1 (127.0.0.2), MX 20 mx2 (127.0.0.3); imp.test: A only; null.test: null MX."""
    return dnsmasq(
        mx=[("a.test", "mx1.a.test", 10), ("a.test", "mx2.a.test", 20)],
        hosts={"mx1.a.test": "127.0.0.2", "mx2.a.test": "127.0.0.3", "imp.test": "127.0.0.4"},
        null_mx=["null.test"],
    )


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_delivers_to_the_best_mx(zone: Any, sinks: Any, sink_port: int, loop: str) -> None:
    mx1 = sinks("127.0.0.2", sink_port)
    mx2 = sinks("127.0.0.3", sink_port)
    bodies = Bodies()
    env = envelope(bodies, ["b@a.test", "c@a.test"])
    cfg = make_cfg(zone.address, sink_port)
    attempt = run(lambda: deliver_once(cfg, bodies, Destination("a.test", "a.test"), env), loop)
    assert all(isinstance(o, Delivered) for o in attempt.outcomes.values()), attempt
    assert set(attempt.outcomes) == {0, 1}
    assert attempt.nexthop == f"mx1.a.test[127.0.0.2]:{sink_port}"
    assert attempt.elapsed > 0
    [msg] = mx1.messages
    assert msg.rcpt_tos == ["b@a.test", "c@a.test"]
    assert msg.mail_from == "a@src.test"
    assert msg.body == BODY  # dot-stuffed on the wire, unstuffed by the sink
    assert msg.helo == "out.fastmta.test"
    assert mx2.connections == 0


def test_mx_fallback_when_first_refuses_or_says_421(zone: Any, sinks: Any, sink_port: int) -> None:
    mx2 = sinks("127.0.0.3", sink_port)
    bodies = Bodies()
    cfg = make_cfg(zone.address, sink_port)
    env = envelope(bodies, ["b@a.test"])
    # 127.0.0.2 has nothing listening: connection refused → mx2
    attempt = run(lambda: deliver_once(cfg, bodies, Destination("a.test", "a.test"), env))
    assert isinstance(attempt.outcomes[0], Delivered)
    assert attempt.nexthop.startswith("mx2.a.test[127.0.0.3]")
    # now mx1 answers 421 at greeting → mx2 again
    mx1 = sinks("127.0.0.2", sink_port, greeting="421 4.7.0 Too busy")
    attempt = run(lambda: deliver_once(cfg, bodies, Destination("a.test", "a.test"), env))
    assert isinstance(attempt.outcomes[0], Delivered)
    assert mx1.connections == 1 and len(mx2.messages) == 2


def test_every_mx_refusing_defers_with_421(zone: Any, sink_port: int, sinks: Any) -> None:
    bodies = Bodies()
    cfg = make_cfg(zone.address, sink_port)
    env = envelope(bodies, ["b@a.test", "c@a.test"])
    attempt = run(lambda: deliver_once(cfg, bodies, Destination("a.test", "a.test"), env))
    for o in attempt.outcomes.values():
        assert isinstance(o, Deferred) and o.reply.code == 421 and o.reply.enhanced == "4.4.1"
        assert o.bounce_class == "connection"
    sinks("127.0.0.2", sink_port, greeting="421 4.7.0 [TSS04] Messages from x temporarily deferred")
    sinks("127.0.0.3", sink_port, greeting="421 4.7.0 [TSS04] Messages from x temporarily deferred")
    attempt = run(lambda: deliver_once(cfg, bodies, Destination("a.test", "a.test"), env))
    o = attempt.outcomes[0]
    assert isinstance(o, Deferred) and o.reply.code == 421 and "TSS04" in o.reply.text
    assert o.bounce_class == "rate_limited"


def test_implicit_mx(zone: Any, sinks: Any, sink_port: int) -> None:
    sink = sinks("127.0.0.4", sink_port)
    bodies = Bodies()
    env = envelope(bodies, ["x@imp.test"])
    cfg = make_cfg(zone.address, sink_port)
    attempt = run(lambda: deliver_once(cfg, bodies, Destination("imp.test", "imp.test"), env))
    assert isinstance(attempt.outcomes[0], Delivered)
    assert sink.rcpts() == ["x@imp.test"]


def test_null_mx_nxdomain_and_no_address(zone: Any, sink_port: int) -> None:
    bodies = Bodies()
    cfg = make_cfg(zone.address, sink_port)
    for domain, enhanced in (("null.test", "5.1.10"), ("nx.test", "5.1.2")):
        env = envelope(bodies, [f"x@{domain}"])
        attempt = run(functools.partial(deliver_once, cfg, bodies, Destination(domain, domain), env))
        o = attempt.outcomes[0]
        assert isinstance(o, Bounced), (domain, o)
        assert o.reply.enhanced == enhanced and o.bounce_class == "bad_domain"


def test_servfail_defers_as_dns(dnsmasq: Any, sink_port: int) -> None:
    dns = dnsmasq(refused=True)
    bodies = Bodies()
    env = envelope(bodies, ["x@a.test"])
    cfg = make_cfg(dns.address, sink_port)
    attempt = run(lambda: deliver_once(cfg, bodies, Destination("a.test", "a.test"), env))
    o = attempt.outcomes[0]
    assert isinstance(o, Deferred) and o.reply.enhanced == "4.4.3" and o.bounce_class == "dns"


def test_dns_timeout_defers_as_dns(dnsmasq: Any, sink_port: int) -> None:
    dns = dnsmasq(servfail=True)  # dead upstream: the query times out
    bodies = Bodies()
    env = envelope(bodies, ["x@a.test"])
    cfg = make_cfg(dns.address, sink_port, **{})
    cfg = config.from_dict({
        "dns": {"nameservers": [dns.address], "timeout": "0.5s"},
        "delivery": {"port": sink_port, "tls": "none"}, "metrics": {"address": ""},
    })  # fmt: skip
    attempt = run(lambda: deliver_once(cfg, bodies, Destination("a.test", "a.test"), env))
    o = attempt.outcomes[0]
    assert isinstance(o, Deferred) and o.reply.enhanced == "4.4.3" and o.bounce_class == "dns"


@pytest.mark.parametrize("pipelining", [True, False])
def test_per_recipient_mix(zone: Any, sinks: Any, sink_port: int, pipelining: bool) -> None:
    mx1 = sinks("127.0.0.2", sink_port, pipelining=pipelining, rcpt={
        "temp@a.test": "451 4.3.0 Try again", "gone@a.test": "550 5.1.1 No such user here",
    })  # fmt: skip
    bodies = Bodies()
    env = envelope(bodies, ["ok@a.test", "temp@a.test", "gone@a.test", "ok2@a.test"])
    cfg = make_cfg(zone.address, sink_port)
    attempt = run(lambda: deliver_once(cfg, bodies, Destination("a.test", "a.test"), env))
    o = attempt.outcomes
    assert isinstance(o[0], Delivered) and isinstance(o[3], Delivered)
    assert isinstance(o[1], Deferred) and o[1].reply.code == 451
    assert isinstance(o[2], Bounced) and o[2].reply.code == 550 and o[2].bounce_class == "invalid_recipient"
    assert mx1.rcpts() == ["ok@a.test", "ok2@a.test"]
    writes = mx1.commands
    assert writes[:2] == ["EHLO out.fastmta.test", "MAIL FROM:<a@src.test>"]


def test_only_some_recipients_of_an_envelope(zone: Any, sinks: Any, sink_port: int) -> None:
    mx1 = sinks("127.0.0.2", sink_port)
    bodies = Bodies()
    env = envelope(bodies, ["done@a.test", "b@a.test", "c@a.test"])
    cfg = make_cfg(zone.address, sink_port)
    attempt = run(lambda: deliver_once(cfg, bodies, Destination("a.test", "a.test"), env, [2, 1]))
    assert set(attempt.outcomes) == {1, 2}
    assert mx1.rcpts() == ["c@a.test", "b@a.test"]


def test_whole_transaction_failures(zone: Any, sinks: Any, sink_port: int) -> None:
    mx1 = sinks("127.0.0.2", sink_port, mail="550 5.7.1 Sender blocked by policy")
    bodies = Bodies()
    env = envelope(bodies, ["b@a.test", "c@a.test"])
    cfg = make_cfg(zone.address, sink_port)
    attempt = run(lambda: deliver_once(cfg, bodies, Destination("a.test", "a.test"), env))
    assert all(isinstance(o, Bounced) and o.bounce_class == "policy" for o in attempt.outcomes.values())
    mx1.script.mail = None
    mx1.script.data = "452 4.2.2 Mailbox full"
    attempt = run(lambda: deliver_once(cfg, bodies, Destination("a.test", "a.test"), env))
    assert all(isinstance(o, Deferred) for o in attempt.outcomes.values())
    assert {o.bounce_class for o in attempt.outcomes.values()} == {"mailbox_full"}
    mx1.script.data = None
    mx1.script.data_cmd = "554 5.7.1 No thanks"
    attempt = run(lambda: deliver_once(cfg, bodies, Destination("a.test", "a.test"), env))
    assert all(isinstance(o, Bounced) for o in attempt.outcomes.values())


def test_chunking_sends_bdat(zone: Any, sinks: Any, sink_port: int) -> None:
    mx1 = sinks("127.0.0.2", sink_port, chunking=True)
    bodies = Bodies()
    body = BODY + b"..two dots\r\n.\r\nlone dot above\r\n"
    env = envelope(bodies, ["b@a.test"], body=body)
    cfg = make_cfg(zone.address, sink_port)
    attempt = run(lambda: deliver_once(cfg, bodies, Destination("a.test", "a.test"), env))
    assert isinstance(attempt.outcomes[0], Delivered)
    [msg] = mx1.messages
    assert msg.bdat and msg.body == body
    assert f"BDAT {len(msg.data)} LAST" in mx1.commands


def test_connection_reuse(zone: Any, sinks: Any, sink_port: int) -> None:
    mx1 = sinks("127.0.0.2", sink_port)
    bodies = Bodies()
    cfg = make_cfg(zone.address, sink_port, max_messages_per_connection=4)
    envs = [envelope(bodies, [f"r{i}@a.test"], msg_id=f"m{i}") for i in range(10)]

    attempts = run(functools.partial(deliver_in_turn, cfg, bodies, envs))
    assert all(isinstance(a.outcomes[0], Delivered) for a in attempts)
    mx1.wait_messages(10)
    assert mx1.connections == 3  # 4 + 4 + 2 messages
    assert {m.connection for m in mx1.messages} == {1, 2, 3}
    assert mx1.commands.count("RSET") == 0  # clean transactions need no RSET
    assert mx1.commands.count("QUIT") == 3


def test_reused_connection_closed_by_peer_is_replaced(zone: Any, sinks: Any, sink_port: int) -> None:
    mx1 = sinks("127.0.0.2", sink_port)
    bodies = Bodies()
    cfg = make_cfg(zone.address, sink_port)
    e1, e2 = envelope(bodies, ["a@a.test"], msg_id="m1"), envelope(bodies, ["b@a.test"], msg_id="m2")

    async def go() -> tuple[Attempt, Attempt]:
        d = SmtpDeliverer(cfg, bodies)
        try:
            a1 = await d.deliver(Destination("a.test", "a.test"), e1, [0])
            mx1.stop_connections()
            await asyncio.sleep(0.1)
            a2 = await d.deliver(Destination("a.test", "a.test"), e2, [0])
            return a1, a2
        finally:
            await d.close()

    a1, a2 = run(go)
    assert isinstance(a1.outcomes[0], Delivered) and isinstance(a2.outcomes[0], Delivered)
    assert mx1.connections == 2


def test_size_smtputf8_and_8bit_limits(zone: Any, sinks: Any, sink_port: int) -> None:
    mx1 = sinks(
        "127.0.0.2", sink_port, size=120, smtputf8=False, eightbitmime=False
    )  # X-Fastmta-Ref included
    bodies = Bodies()
    cfg = make_cfg(zone.address, sink_port)
    dest = Destination("a.test", "a.test")
    big = envelope(bodies, ["b@a.test"], body=b"x" * 120 + b"\r\n", msg_id="big")
    o = run(lambda: deliver_once(cfg, bodies, dest, big)).outcomes[0]
    assert isinstance(o, Bounced) and o.reply.enhanced == "5.3.4"
    utf8 = envelope(bodies, ["jöran@a.test"], body=b"Subject: x\r\n\r\nx\r\n", msg_id="u", SMTPUTF8="")
    o = run(lambda: deliver_once(cfg, bodies, dest, utf8)).outcomes[0]
    assert isinstance(o, Bounced) and o.reply.enhanced == "5.6.7"
    body8 = "Subject: x\r\n\r\nGrüße\r\n".encode()
    eight = envelope(bodies, ["b@a.test"], body=body8, msg_id="e", BODY="8BITMIME")
    o = run(lambda: deliver_once(cfg, bodies, dest, eight)).outcomes[0]
    assert isinstance(o, Bounced) and o.reply.enhanced == "5.6.3"
    assert mx1.messages == []
    # an ASCII message flagged SMTPUTF8 does not need it: it goes through
    plain = envelope(bodies, ["b@a.test"], body=b"Subject: x\r\n\r\nx\r\n", msg_id="p", SMTPUTF8="")
    o = run(lambda: deliver_once(cfg, bodies, dest, plain)).outcomes[0]
    assert isinstance(o, Delivered)
    assert mx1.messages[0].mail_options == [f"SIZE={len(mx1.messages[0].data)}"]


def test_params_passed_on(zone: Any, sinks: Any, sink_port: int) -> None:
    mx1 = sinks("127.0.0.2", sink_port, dsn=True, size=10_000)
    bodies = Bodies()
    body = "Subject: Grüße\r\n\r\nÄ\r\n".encode()
    env = envelope(bodies, ["jöran@a.test", "b@a.test"], body=body, BODY="8BITMIME", SMTPUTF8="",
                   RET="HDRS", ENVID="id+1 x")  # fmt: skip
    env.rcpts[1].notify = "SUCCESS,FAILURE"
    env.rcpts[1].orcpt = "rfc822;B@a.test"
    cfg = make_cfg(zone.address, sink_port)
    attempt = run(lambda: deliver_once(cfg, bodies, Destination("a.test", "a.test"), env))
    assert all(isinstance(o, Delivered) for o in attempt.outcomes.values())
    [msg] = mx1.messages
    assert msg.mail_options == [
        f"SIZE={len(msg.data)}", "BODY=8BITMIME", "SMTPUTF8", "RET=HDRS", "ENVID=id+2B1+20x"
    ]  # fmt: skip
    assert msg.rcpt_options == [[], ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;B@a.test"]]
    assert msg.body == body


def test_no_dsn_params_to_a_hop_without_dsn(zone: Any, sinks: Any, sink_port: int) -> None:
    mx1 = sinks("127.0.0.2", sink_port)
    bodies = Bodies()
    env = envelope(bodies, ["b@a.test"], RET="FULL")
    env.rcpts[0].notify = "NEVER"
    cfg = make_cfg(zone.address, sink_port)
    run(lambda: deliver_once(cfg, bodies, Destination("a.test", "a.test"), env))
    assert mx1.commands[1] == "MAIL FROM:<a@src.test>"
    assert mx1.commands[2] == "RCPT TO:<b@a.test>"


def test_null_sender_and_missing_body(zone: Any, sinks: Any, sink_port: int) -> None:
    mx1 = sinks("127.0.0.2", sink_port)
    bodies = Bodies()
    env = envelope(bodies, ["b@a.test"], sender="")
    cfg = make_cfg(zone.address, sink_port)
    o = run(lambda: deliver_once(cfg, bodies, Destination("a.test", "a.test"), env)).outcomes[0]
    assert isinstance(o, Delivered)
    assert mx1.commands[1] == "MAIL FROM:<>"
    del bodies.data[env.id]
    o = run(lambda: deliver_once(cfg, bodies, Destination("a.test", "a.test"), env)).outcomes[0]
    assert isinstance(o, Deferred) and o.reply.enhanced == "4.3.0"


def test_body_comes_from_a_real_spool(zone: Any, sinks: Any, sink_port: int, tmp_path: Any) -> None:
    from fastmta.spool import Spool

    mx1 = sinks("127.0.0.2", sink_port)
    cfg = config.from_dict({
        "hostname": "out.fastmta.test",
        "spool": {"path": str(tmp_path / "spool"), "map_size": "16MiB"},
        "dns": {"nameservers": [zone.address]}, "delivery": {"port": sink_port, "tls": "none"},
        "metrics": {"address": ""},
    })  # fmt: skip

    async def go() -> Attempt:
        spool = Spool.open(cfg.spool)
        await spool.start()
        try:
            env = Envelope(id="", sender="a@src.test", rcpts=[Recipient("b@a.test")])
            await spool.put(env, BODY)
            d = SmtpDeliverer(cfg, spool)
            try:
                return await d.deliver(Destination("a.test", "a.test"), env, [0])
            finally:
                await d.close()
        finally:
            await spool.aclose()

    attempt = run(go)
    assert isinstance(attempt.outcomes[0], Delivered)
    assert mx1.messages[0].body == BODY


def test_many_messages_to_smtp_sink_reuse_connections(zone: Any, smtp_sink: Any, sink_port: int) -> None:
    sink = smtp_sink("127.0.0.2", sink_port)
    bodies = Bodies()
    n, concurrency = 300, 10
    cfg = make_cfg(zone.address, sink_port, max_messages_per_connection=100)
    envs = [envelope(bodies, [f"r{i}@a.test"], msg_id=f"m{i}", body=BODY * 40) for i in range(n)]

    async def go() -> list[Attempt]:
        d = SmtpDeliverer(cfg, bodies)
        queue = list(envs)
        results: list[Attempt] = []

        async def worker() -> None:
            while queue:
                results.append(await d.deliver(Destination("a.test", "a.test"), queue.pop(), [0]))

        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            await d.close()
        return results

    attempts = run(go)
    assert all(isinstance(a.outcomes[0], Delivered) for a in attempts)
    assert sink.wait_count(n) == n
    wait_until(lambda: sink.sessions() >= concurrency, what=f"{concurrency} sessions ended at smtp-sink")
    assert concurrency <= sink.sessions() <= 2 * concurrency  # ~n/100 per worker, not one per message


def test_too_many_recipients_continues_in_new_transactions(zone: Any, sinks: Any, sink_port: int) -> None:
    mx1 = sinks("127.0.0.2", sink_port, max_rcpts=3)
    bodies = Bodies()
    env = envelope(bodies, [f"r{i}@a.test" for i in range(8)])
    cfg = make_cfg(zone.address, sink_port)
    attempt = run(lambda: deliver_once(cfg, bodies, Destination("a.test", "a.test"), env))
    assert all(isinstance(o, Delivered) for o in attempt.outcomes.values()), attempt
    assert [len(m.rcpt_tos) for m in mx1.messages] == [3, 3, 2]
    assert mx1.connections == 1 and sorted(mx1.rcpts()) == sorted(r.addr for r in env.rcpts)


def test_ipv6_mx(dnsmasq: Any, sinks: Any, sink_port: int) -> None:
    dns = dnsmasq(mx=[("six.test", "mx6.six.test", 10)], hosts={"mx6.six.test": "::1"})
    sink = sinks("::1", sink_port)
    bodies = Bodies()
    env = envelope(bodies, ["b@six.test"])
    attempt = run(
        lambda: deliver_once(
            make_cfg(dns.address, sink_port), bodies, Destination("six.test", "six.test"), env
        )
    )
    assert isinstance(attempt.outcomes[0], Delivered)
    assert attempt.nexthop == f"mx6.six.test[::1]:{sink_port}"
    assert sink.rcpts() == ["b@six.test"]


def test_idle_connections_quit_after_idle_timeout(zone: Any, sinks: Any, sink_port: int) -> None:
    mx1 = sinks("127.0.0.2", sink_port)
    bodies = Bodies()
    env = envelope(bodies, ["b@a.test"])
    cfg = make_cfg(zone.address, sink_port, idle_timeout="0.2s")
    gauge = metrics.destination_connections_active

    async def go() -> tuple[int, int, float, float]:
        d = SmtpDeliverer(cfg, bodies)
        before = gauge._value.get()
        await d.deliver(Destination("a.test", "a.test"), env, [0])
        idle_then, during = d.pool.idle_count("a.test"), gauge._value.get() - before
        deadline = time.monotonic() + 30  # 0.2 s idle, then QUIT and its 221: later on a loaded machine
        while (d.pool.idle_count() or gauge._value.get() != before) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        idle_later, after = d.pool.idle_count(), gauge._value.get() - before
        await d.close()
        return idle_then, idle_later, during, after

    idle_then, idle_later, during, after = run(go)
    assert (idle_then, idle_later, during, after) == (1, 0, 1.0, 0.0)
    assert mx1.commands[-1] == "QUIT"


@pytest.mark.parametrize("chunking", [False, True])
def test_large_body_with_flow_control(zone: Any, sinks: Any, sink_port: int, chunking: bool) -> None:
    mx1 = sinks("127.0.0.2", sink_port, chunking=chunking)
    bodies = Bodies()
    line = b"." + b"y" * 76 + b"\r\n"
    body = b"Subject: big\r\n\r\n" + line * 40_000  # ~3 MiB, every line dot-stuffed on the wire
    env = envelope(bodies, ["b@a.test"], body=body)
    attempt = run(
        lambda: deliver_once(make_cfg(zone.address, sink_port), bodies, Destination("a.test", "a.test"), env)
    )
    assert isinstance(attempt.outcomes[0], Delivered)
    [msg] = mx1.messages
    assert msg.bdat is chunking and msg.body == body


@pytest.mark.parametrize(("pipelining", "chunking"), [(True, False), (False, False), (True, True)])
def test_reuse_after_a_failed_transaction_resets(zone: Any, sinks: Any, sink_port: int, pipelining: bool,
                                                 chunking: bool) -> None:  # fmt: skip
    mx1 = sinks("127.0.0.2", sink_port, pipelining=pipelining, chunking=chunking,
                rcpt={"busy@a.test": "451 4.3.0 busy"})  # fmt: skip
    bodies = Bodies()
    cfg = make_cfg(zone.address, sink_port)
    e1, e2 = envelope(bodies, ["busy@a.test"], msg_id="m1"), envelope(bodies, ["ok@a.test"], msg_id="m2")

    a = run(functools.partial(deliver_in_turn, cfg, bodies, [e1, e2, e1, e2]))
    assert [type(x.outcomes[0]) for x in a] == [Deferred, Delivered, Deferred, Delivered]
    assert mx1.connections == 1 and mx1.rcpts() == ["ok@a.test", "ok@a.test"]
    assert mx1.commands.count("RSET") == 2


def test_unreachable_mx_is_tried_last_for_a_while(zone: Any, sinks: Any, sink_port: int) -> None:
    mx2 = sinks("127.0.0.3", sink_port)
    bodies = Bodies()
    cfg = make_cfg(zone.address, sink_port, max_messages_per_connection=1)
    envs = [envelope(bodies, [f"r{i}@a.test"], msg_id=f"m{i}") for i in range(3)]

    refused_counter = metrics.delivery_connections_total.labels("refused")
    before = refused_counter._value.get()
    attempts = run(functools.partial(deliver_in_turn, cfg, bodies, envs))
    assert all(isinstance(a.outcomes[0], Delivered) for a in attempts)
    assert len(mx2.messages) == 3
    refused = refused_counter._value.get()
    assert refused - before == 1  # only the first connection tried the dead primary
    mx1 = sinks("127.0.0.2", sink_port)
    # a new deliverer has no memory: mx1 (now up) is first again
    attempts = run(functools.partial(deliver_in_turn, cfg, bodies, envs))
    assert (
        len(mx1.messages) == 3
        and metrics.delivery_connections_total.labels("refused")._value.get() == refused
    )


def test_421_on_a_reused_connection_reconnects_without_deferring(
    zone: Any, sinks: Any, sink_port: int
) -> None:
    mx1 = sinks("127.0.0.2", sink_port, max_messages=2)
    bodies = Bodies()
    cfg = make_cfg(zone.address, sink_port)
    envs = [envelope(bodies, [f"r{i}@a.test"], msg_id=f"m{i}") for i in range(5)]

    attempts = run(functools.partial(deliver_in_turn, cfg, bodies, envs))
    assert all(isinstance(a.outcomes[0], Delivered) for a in attempts), attempts
    assert mx1.connections == 3 and len(mx1.messages) == 5


def test_reload_applies_to_new_connections(zone: Any, sinks: Any, sink_port: int) -> None:
    mx1 = sinks("127.0.0.2", sink_port)
    other_port = free_port_on("127.0.0.2")
    mx1_new = sinks("127.0.0.2", other_port)
    bodies = Bodies()
    env = envelope(bodies, ["b@a.test"])
    cfg = make_cfg(zone.address, sink_port)

    async def go() -> None:
        d = SmtpDeliverer(cfg, bodies)
        try:
            await d.deliver(Destination("a.test", "a.test"), env, [0])
            d.reload(make_cfg(zone.address, other_port))
            await d.pool.close()
            await d.deliver(Destination("a.test", "a.test"), env, [0])
        finally:
            await d.close()

    run(go)
    assert len(mx1.messages) == 1 and len(mx1_new.messages) == 1
