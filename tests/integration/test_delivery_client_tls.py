# SPDX-License-Identifier: MIT
"""TLS policies, routes with AUTH, timeouts and broken connections, against real sinks."""

from __future__ import annotations

import os
import ssl
import time
from pathlib import Path
from typing import Any

import pytest

from fastmta import metrics
from fastmta.delivery import Attempt, Destination, destination_for
from fastmta.delivery.smtp import SmtpDeliverer, mail_commands, rcpt_outcomes
from fastmta.errors import Bounced, Deferred, Delivered
from tests.integration.test_delivery_client import Bodies, deliver_once, envelope, make_cfg, run

pytestmark = pytest.mark.timeout(60)
A = Destination("a.test", "a.test")


@pytest.fixture
def zone(dnsmasq: Any) -> Any:
    return dnsmasq(
        mx=[("a.test", "mx1.a.test", 10), ("a.test", "mx2.a.test", 20)],
        hosts={"mx1.a.test": "127.0.0.2", "mx2.a.test": "127.0.0.3", "smarthost.test": "127.0.0.6"},
    )


def test_opportunistic_starttls(zone: Any, sinks: Any, sink_port: int) -> None:
    mx1 = sinks("127.0.0.2", sink_port, starttls=True, tls_names=("somebody-else.test",))
    bodies = Bodies()
    env = envelope(bodies, ["b@a.test"])
    attempt = run(
        lambda: deliver_once(make_cfg(zone.address, sink_port, tls="opportunistic"), bodies, A, env)
    )
    assert isinstance(attempt.outcomes[0], Delivered)  # a wrong name does not matter: no verification
    assert attempt.tls in ("TLSv1.2", "TLSv1.3")
    assert mx1.messages[0].tls == attempt.tls
    assert mx1.commands[:3] == ["EHLO out.fastmta.test", "STARTTLS", "EHLO out.fastmta.test"]


def test_opportunistic_without_starttls_offered_is_plain(zone: Any, sinks: Any, sink_port: int) -> None:
    mx1 = sinks("127.0.0.2", sink_port)
    bodies = Bodies()
    env = envelope(bodies, ["b@a.test"])
    attempt = run(
        lambda: deliver_once(make_cfg(zone.address, sink_port, tls="opportunistic"), bodies, A, env)
    )
    assert isinstance(attempt.outcomes[0], Delivered) and attempt.tls is None
    assert mx1.messages[0].tls is None


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1 is deprecated:DeprecationWarning")
def test_opportunistic_handshake_failure_retries_in_plaintext(zone: Any, sinks: Any, sink_port: int,
                                                              tls_ca: Any) -> None:  # fmt: skip
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert("mx1.a.test").configure_cert(ctx)
    ctx.maximum_version = ssl.TLSVersion.TLSv1  # our client refuses TLS 1.0: the handshake fails
    mx1 = sinks("127.0.0.2", sink_port, starttls=True, tls_context=ctx)
    bodies = Bodies()
    env = envelope(bodies, ["b@a.test"])
    attempt = run(
        lambda: deliver_once(make_cfg(zone.address, sink_port, tls="opportunistic"), bodies, A, env)
    )
    assert isinstance(attempt.outcomes[0], Delivered) and attempt.tls is None
    assert mx1.connections == 2 and mx1.messages[0].tls is None


def test_required_tls_verified(zone: Any, sinks: Any, sink_port: int, tls_ca_file: str) -> None:
    mx1 = sinks("127.0.0.2", sink_port, starttls=True, tls_names=("mx1.a.test",))
    bodies = Bodies()
    env = envelope(bodies, ["b@a.test"])
    cfg = make_cfg(zone.address, sink_port, tls="required", tls_ca_file=tls_ca_file)
    attempt = run(lambda: deliver_once(cfg, bodies, A, env))
    assert isinstance(attempt.outcomes[0], Delivered) and attempt.tls == "TLSv1.3"
    assert mx1.messages[0].tls == "TLSv1.3"


def test_required_tls_failures_defer_as_tls(zone: Any, sinks: Any, sink_port: int, tls_ca_file: str) -> None:
    # mx1: certificate for another name; mx2: no STARTTLS at all
    mx1 = sinks("127.0.0.2", sink_port, starttls=True, tls_names=("wrong.test",))
    mx2 = sinks("127.0.0.3", sink_port)
    bodies = Bodies()
    env = envelope(bodies, ["b@a.test"])
    cfg = make_cfg(zone.address, sink_port, tls="required", tls_ca_file=tls_ca_file)
    active = metrics.destination_connections_active._value.get()
    attempt = run(lambda: deliver_once(cfg, bodies, A, env))
    assert metrics.destination_connections_active._value.get() == active  # failed upgrades are counted out
    o = attempt.outcomes[0]
    assert isinstance(o, Deferred) and o.bounce_class == "tls" and o.reply.code == 451
    assert mx1.messages == [] and mx2.messages == []
    # Nothing of the transaction goes out in plaintext, to either host: mx1 got as far as
    # STARTTLS, and the client refused its certificate before finishing the handshake.
    assert mx1.commands == ["EHLO out.fastmta.test", "STARTTLS"] and mx1.tls_handshakes == 0
    assert not any(c.split()[0] in ("MAIL", "RCPT", "DATA", "BDAT") for c in mx2.commands), mx2.commands
    mx2.script.starttls = True  # mx2 now offers TLS, but with a certificate for its own address only
    o = run(lambda: deliver_once(cfg, bodies, A, env)).outcomes[0]
    assert isinstance(o, Deferred) and o.bounce_class == "tls"
    assert "verify" in o.reply.text.lower() or "certificate" in o.reply.text.lower()


def test_route_tls_overrides_delivery_tls(zone: Any, sinks: Any, sink_port: int) -> None:
    hop = sinks("127.0.0.5", sink_port, starttls=True)
    bodies = Bodies()
    env = envelope(bodies, ["x@far.test"])
    route = {"domain": "far.test", "nexthop": f"127.0.0.5:{sink_port}", "tls": "none"}
    cfg = make_cfg(zone.address, sink_port, tls="opportunistic", routes=[route])
    dest = destination_for(cfg.route_for("far.test"), "far.test")
    assert dest.key == f"[127.0.0.5]:{sink_port}"
    attempt = run(lambda: deliver_once(cfg, bodies, dest, env))
    assert isinstance(attempt.outcomes[0], Delivered) and attempt.tls is None
    assert "STARTTLS" not in hop.commands


def test_smarthost_route_with_auth(zone: Any, sinks: Any, sink_port: int, tmp_path: Path) -> None:
    hop = sinks("127.0.0.6", sink_port, auth={"relayuser": "s3cret:pw"})
    auth = tmp_path / "smarthost.auth"
    auth.write_text("# user:password\nrelayuser:s3cret:pw\n")
    bodies = Bodies()
    env = envelope(bodies, ["x@anywhere.test", "y@else.test"])
    route = {"domain": "*", "nexthop": f"smarthost.test:{sink_port}", "auth_file": str(auth)}
    cfg = make_cfg(zone.address, sink_port, routes=[route])
    dest = destination_for(cfg.route_for("anywhere.test"), "anywhere.test")

    async def twice() -> tuple[Attempt, Attempt]:
        d = SmtpDeliverer(cfg, bodies)
        try:
            first = await d.deliver(dest, env, [0, 1])
            await d.pool.close()  # force a new session: AUTH again
            auth.write_text("relayuser:wrong\n")  # the file changed: read again
            os.utime(auth, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
            return first, await d.deliver(dest, env, [0, 1])
        finally:
            await d.close()

    attempt, second = run(twice)
    assert all(isinstance(o, Delivered) for o in attempt.outcomes.values()), attempt
    assert attempt.nexthop == f"smarthost.test[127.0.0.6]:{sink_port}"
    [msg] = hop.messages
    assert msg.auth_user == "relayuser" and msg.rcpt_tos == ["x@anywhere.test", "y@else.test"]
    assert "AUTH PLAIN" in hop.commands and not any("s3cret" in c for c in hop.commands)
    # a wrong password defers (never bounces) as a policy problem, and never shows the secret
    o = second.outcomes[0]
    assert isinstance(o, Deferred) and o.reply.code == 451 and o.bounce_class == "policy"
    assert "wrong" not in str(o.reply)


def test_auth_login_when_plain_is_not_offered(zone: Any, sinks: Any, sink_port: int, tmp_path: Path) -> None:
    hop = sinks("127.0.0.5", sink_port, auth={"u": "p"})
    auth = tmp_path / "a"
    auth.write_text("u:p\n")
    bodies = Bodies()
    route = {"domain": "far.test", "nexthop": f"127.0.0.5:{sink_port}", "auth_file": str(auth)}
    cfg = make_cfg(zone.address, sink_port, routes=[route])
    dest = destination_for(cfg.route_for("far.test"), "far.test")

    async def go() -> Any:
        d = SmtpDeliverer(cfg, bodies)
        try:
            client = await d._open(next(iter(await d._hosts(dest))))
            client.ext["AUTH"] = "LOGIN"
            reply = await client.auth("u", "p")
            await client.quit()
            return reply
        finally:
            await d.close()

    reply = run(go)
    assert reply is not None and reply.code == 235
    assert "AUTH LOGIN" in hop.commands


def test_slow_greetings_time_out(zone: Any, sinks: Any, sink_port: int) -> None:
    sinks("127.0.0.2", sink_port, delay=2.0)
    sinks("127.0.0.3", sink_port, delay=2.0)
    bodies = Bodies()
    env = envelope(bodies, ["b@a.test"])
    cfg = make_cfg(zone.address, sink_port, command_timeout="0.5s")
    o = run(lambda: deliver_once(cfg, bodies, A, env)).outcomes[0]
    assert isinstance(o, Deferred) and o.bounce_class == "timeout", o


def test_slow_final_reply_times_out(zone: Any, sinks: Any, sink_port: int) -> None:
    mx1 = sinks("127.0.0.2", sink_port)
    bodies = Bodies()
    env = envelope(bodies, ["b@a.test"])
    cfg = make_cfg(
        zone.address, sink_port, command_timeout="2s"
    )  # the prompt greeting and EHLO fit, loaded or not

    async def go() -> Any:
        d = SmtpDeliverer(cfg, bodies)
        try:
            client = await d._open(next(iter(await d._hosts(A))))
            mx1.script.data = None
            mx1.script.delay = 3.0  # now every reply is late
            mail, rcpts = mail_commands(client, env, [0], bodies.data["m1"])
            tx = await client.send(mail, rcpts, bodies.data["m1"], reset=False)
            return tx, client.usable, rcpt_outcomes(tx, [0])
        finally:
            await d.close()

    tx, usable, outcomes = run(go)
    assert tx.error == "timeout" and not usable
    assert isinstance(outcomes[0], Deferred) and outcomes[0].bounce_class == "timeout"


@pytest.mark.parametrize("where", ["rcpt", "data", "body"])
def test_dropped_connection_defers(zone: Any, sinks: Any, sink_port: int, where: str) -> None:
    mx1 = sinks("127.0.0.2", sink_port, drop=where)
    bodies = Bodies()
    env = envelope(bodies, ["b@a.test", "c@a.test"])
    attempt = run(lambda: deliver_once(make_cfg(zone.address, sink_port), bodies, A, env))
    for o in attempt.outcomes.values():
        assert isinstance(o, Deferred) and o.bounce_class == "connection" and o.reply.enhanced == "4.4.2"
    # The sink closes without a reply (and keeps no message) at the first RCPT, at DATA,
    # or after the whole body: the client got that far, and no further.
    assert mx1.messages == []
    last = {"rcpt": "RCPT TO:<b@a.test>", "data": "DATA", "body": "DATA"}[where]
    assert mx1.commands[-1] == last and mx1.connections == 1, mx1.commands


def test_421_mid_transaction_defers_and_drops_the_connection(zone: Any, sinks: Any, sink_port: int) -> None:
    mx1 = sinks("127.0.0.2", sink_port, rcpt={"b@a.test": "421 4.7.0 Too many connections, slow down"})
    bodies = Bodies()
    env = envelope(bodies, ["b@a.test", "c@a.test"])
    attempt = run(lambda: deliver_once(make_cfg(zone.address, sink_port), bodies, A, env))
    o = attempt.outcomes[0]
    assert isinstance(o, Deferred) and o.reply.code == 421 and o.bounce_class == "rate_limited"
    assert attempt.outcomes[1] == o  # the channel closed: c@ was never answered and shares the 421
    assert "QUIT" not in mx1.commands  # a 421 means the channel is closing: no reuse, no QUIT


def test_5xx_greeting_skips_to_next_mx_then_defers(zone: Any, sinks: Any, sink_port: int) -> None:
    sinks("127.0.0.2", sink_port, greeting="554 5.7.1 You are not welcome")
    sinks("127.0.0.3", sink_port, greeting="554 5.7.1 You are not welcome")
    bodies = Bodies()
    env = envelope(bodies, ["b@a.test"])
    o = run(lambda: deliver_once(make_cfg(zone.address, sink_port), bodies, A, env)).outcomes[0]
    assert isinstance(o, Deferred) and not isinstance(o, Bounced)
    assert o.reply.code == 451 and o.reply.enhanced == "4.7.1" and o.bounce_class == "policy"


def test_opportunistic_starttls_refused_goes_on_in_plaintext(zone: Any, sinks: Any, sink_port: int) -> None:
    mx1 = sinks("127.0.0.2", sink_port, starttls=True)
    mx1.script.starttls_reply = "454 4.7.0 TLS not available due to temporary reason"
    bodies = Bodies()
    env = envelope(bodies, ["b@a.test"])
    cfg = make_cfg(zone.address, sink_port, tls="opportunistic")
    attempt = run(lambda: deliver_once(cfg, bodies, A, env))
    assert isinstance(attempt.outcomes[0], Delivered) and attempt.tls is None
    assert mx1.connections == 1 and mx1.commands[:3] == [
        "EHLO out.fastmta.test",
        "STARTTLS",
        "MAIL FROM:<a@src.test>",
    ]
