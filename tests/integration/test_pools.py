# SPDX-License-Identifier: MIT
"""Sending pools end to end (tests/fixtures/pools.py): the sink records each connection's
peer address and EHLO name, so it sees which source sent each message."""

from __future__ import annotations

import collections
import signal
import smtplib
from typing import Any

import pytest

from tests.fixtures.pools import delivered, message, send
from tests.support import free_port, run_fastmta, wait_until


def test_pool_by_header_binds_its_source_and_says_its_ehlo(pooled_mta: Any) -> None:
    env = pooled_mta()
    data = message("a@other.test", "x@a.test", "X-Fastmta-Pool: tx\r\nX-Fastmta-Tenant: shop1\r\n")
    send(env.port, "a@other.test", ["x@a.test"], data)
    [msg] = env.sinks["sink"].wait_messages(1)
    assert (msg.peer, msg.helo) == ("127.0.0.5", "mta5.example.test")
    assert b"X-Fastmta-Pool" not in msg.data and b"X-Fastmta-Tenant" not in msg.data  # removed
    assert msg.ref  # every outgoing message carries the complaint token
    [rec] = [r for r in delivered(env, 1) if r["event"] == "delivered"]
    assert (rec["pool"], rec["source"], rec["tenant"]) == ("tx", "127.0.0.5", "shop1")


def test_pool_by_sender_domain_else_the_default_pool(pooled_mta: Any) -> None:
    env = pooled_mta()
    send(env.port, "a@news.example.test", ["x@a.test"], message("a@news.example.test", "x@a.test"))
    send(env.port, "a@other.test", ["y@a.test"], message("a@other.test", "y@a.test"))
    msgs = env.sinks["sink"].wait_messages(2)
    by_rcpt = {m.rcpt_tos[0]: m for m in msgs}
    assert (by_rcpt["x@a.test"].peer, by_rcpt["x@a.test"].helo) in {
        ("127.0.0.3", "mta3.example.test"), ("127.0.0.4", "mta4.example.test")
    }  # fmt: skip
    assert (by_rcpt["y@a.test"].peer, by_rcpt["y@a.test"].helo) == ("127.0.0.1", "mx.fastmta.test")
    recs = {r["rcpt"]: r for r in delivered(env, 2) if r["event"] == "delivered"}
    assert recs["y@a.test"]["pool"] == "default" and recs["y@a.test"]["source"] == ""
    assert recs["x@a.test"]["pool"] == "bulk" and recs["x@a.test"]["tenant"] == ""


def test_weights_hold_over_300_messages(pooled_mta: Any) -> None:
    env = pooled_mta()
    with smtplib.SMTP("127.0.0.1", env.port, timeout=30) as c:
        for i in range(300):
            c.sendmail(
                "a@news.example.test", [f"r{i}@a.test"], message("a@news.example.test", f"r{i}@a.test")
            )
    msgs = env.sinks["sink"].wait_messages(300, timeout=120)
    count = collections.Counter(m.peer for m in msgs)
    assert set(count) == {"127.0.0.3", "127.0.0.4"}
    assert abs(count["127.0.0.3"] - 100) <= 10 and abs(count["127.0.0.4"] - 200) <= 20, count


def test_a_421_throttles_only_the_source_that_saw_it(pooled_mta: Any) -> None:
    env = pooled_mta(greeting_for={"127.0.0.3": "421 4.7.0 Too many connections from your IP"})
    with smtplib.SMTP("127.0.0.1", env.port, timeout=30) as c:
        for i in range(30):
            c.sendmail(
                "a@news.example.test", [f"r{i}@a.test"], message("a@news.example.test", f"r{i}@a.test")
            )
    # retries take the next source in turn, so in the end everything leaves through 127.0.0.4
    recs = delivered(env, 30)
    deferred = [r for r in recs if r["event"] == "deferred"]
    assert all(r["source"] == "127.0.0.4" for r in recs if r["event"] == "delivered")
    assert deferred and all(r["source"] == "127.0.0.3" and r["code"] == 421 for r in deferred)
    assert {m.peer for m in env.sinks["sink"].messages} == {"127.0.0.4"}


def test_pool_header_from_a_client_that_may_not_relay_is_refused(pooled_mta: Any) -> None:
    env = pooled_mta()
    data = message("a@other.test", "x@a.test", "X-Fastmta-Pool: tx\r\n")
    with pytest.raises(smtplib.SMTPDataError) as e:
        send(env.port, "a@other.test", ["x@a.test"], data, source="127.0.0.9")
    assert e.value.smtp_code == 550 and e.value.smtp_error.startswith(b"5.7.1")
    with pytest.raises(smtplib.SMTPDataError) as e:  # a relay client naming a pool that does not exist
        send(env.port, "a@other.test", ["x@a.test"], message("a", "x", "X-Fastmta-Pool: nope\r\n"))
    assert e.value.smtp_code == 550 and b"pool" in e.value.smtp_error
    assert env.sinks["sink"].messages == []


def test_an_unbindable_source_is_a_start_up_error(make_config: Any) -> None:
    port = free_port()
    cfg = make_config(f"""
        [[listener]]
        address = "127.0.0.1:{port}"
        [[pool]]
        name = "far"
        sources = [ {{ address = "192.0.2.77", ehlo = "far.example.test" }} ]
    """)
    res = run_fastmta("serve", "--config", str(cfg), timeout=30)
    assert res.returncode == 2
    assert b"pool[0].sources[0].address: cannot bind 192.0.2.77" in res.stderr


def test_a_reload_with_an_unbindable_source_is_refused(pooled_mta: Any) -> None:
    env = pooled_mta()
    env.config.write_text(env.config.read_text().replace('"127.0.0.5"', '"192.0.2.77"'))
    env.server.signal(signal.SIGHUP)
    wait_until(lambda: "reload refused" in env.server.stderr(), 20, "the refused reload")
    assert "pool[1].sources[0].address: cannot bind 192.0.2.77" in env.server.stderr()
    send(
        env.port, "a@other.test", ["x@a.test"], message("a@other.test", "x@a.test", "X-Fastmta-Pool: tx\r\n")
    )
    [msg] = env.sinks["sink"].wait_messages(1)
    assert msg.peer == "127.0.0.5"  # the running configuration stands
