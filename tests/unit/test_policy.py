# SPDX-License-Identifier: MIT
"""Relay decisions and the per-IP counters."""

from __future__ import annotations

from fastmta.config import from_dict
from fastmta.smtp.policy import AuthFailures, ConnectionLimits, Policy


def test_default_policy_is_not_an_open_relay() -> None:
    p = Policy(from_dict({}))
    assert p.is_relay_client("127.0.0.1") and p.is_relay_client("127.9.9.9") and p.is_relay_client("::1")
    assert p.is_relay_client("::ffff:127.0.0.1")
    for ip in ("192.0.2.1", "10.0.0.1", "2001:db8::1", "not-an-ip", "fe80::1%eth0"):
        assert not p.is_relay_client(ip), ip
        assert not p.may_send_to("example.test", p.is_relay_client(ip), False)


def test_domains_and_auth() -> None:
    p = Policy(from_dict({"policy": {"relay_networks": ["192.0.2.0/24"], "relay_domains": ["r.test"],
                                     "local_domains": ["L.test"]}}))  # fmt: skip
    assert p.is_relay_client("192.0.2.77") and not p.is_relay_client("127.0.0.1")
    assert p.may_send_to("r.test", False, False) and p.may_send_to("l.test", False, False)
    assert not p.may_send_to("other.test", False, False)
    assert p.may_send_to("other.test", False, True)  # authenticated
    assert p.may_send_to("other.test", True, False)  # relay network


def test_connection_limits_at_and_past_the_edge() -> None:
    lim = ConnectionLimits(max_connections=3, max_per_ip=2)
    assert lim.admit("a") is None and lim.admit("a") is None
    assert lim.admit("a") == "per_ip"
    assert lim.admit("b") is None
    assert lim.admit("c") == "global"
    lim.release("a")
    assert lim.admit("a") is None
    for ip in ("a", "a", "b"):
        lim.release(ip)
    assert lim.total == 0 and lim.count("a") == 0


def test_auth_failures_window_and_bound() -> None:
    now = [0.0]
    af = AuthFailures(limit=3, window=10.0, max_entries=4, clock=lambda: now[0])
    for _ in range(2):
        af.failed("x")
    assert not af.blocked("x")
    af.failed("x")
    assert af.blocked("x")
    now[0] = 11.0
    assert not af.blocked("x")
    af.failed("y")
    af.succeeded("y")
    assert not af.blocked("y")
    for i in range(10):
        af.failed(f"ip{i}")
    assert len(af._seen) <= 4


def test_mailbox_check_only_for_local_domains() -> None:
    cfg = from_dict({"policy": {"local_domains": ["l.test"]}})
    p = Policy(cfg, lambda addr: addr.startswith("alice@"))
    assert p.mailbox_exists("l.test", "alice@l.test") and not p.mailbox_exists("l.test", "bob@l.test")
    assert p.mailbox_exists("other.test", "bob@other.test")
    assert Policy(cfg).mailbox_exists("l.test", "bob@l.test")
