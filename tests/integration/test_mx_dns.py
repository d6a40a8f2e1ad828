# SPDX-License-Identifier: MIT
"""fastmta.delivery.dns and fastmta.delivery.mx against a real dnsmasq on a loopback port."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fastmta import config, metrics
from fastmta.delivery.dns import DnsFailure, Resolver
from fastmta.delivery.mx import Host, MxError, resolve
from fastmta.errors import Bounced, Deferred
from tests.integration.test_delivery_client import run

pytestmark = pytest.mark.timeout(60)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resolver(address: str, clock: Clock | None = None, timeout: str = "10s") -> Resolver:
    # A generous timeout: a retry after a slow (loaded) answer would add a query to the counts.
    cfg = config.from_dict({"dns": {"nameservers": [address], "timeout": timeout}})
    return Resolver(cfg.dns, clock=clock) if clock else Resolver(cfg.dns)


@pytest.fixture
def zone(dnsmasq: Any) -> Any:
    return dnsmasq(
        mx=[("a.test", "mx1.a.test", 10), ("a.test", "mx2.a.test", 10), ("a.test", "backup.a.test", 30),
            ("b.test", "gone.b.test", 10), ("b.test", "mx.b.test", 20), ("mixed.test", "mx.b.test", 10)],
        hosts={"mx1.a.test": "127.0.0.2", "mx2.a.test": "127.0.0.3", "backup.a.test": ["127.0.0.4", "::1"],
               "mx.b.test": "127.0.0.5", "imp.test": "127.0.0.6"},
        null_mx=["null.test", "mixed.test"], ttl=300,
    )  # fmt: skip


def test_mx_order_preference_then_random_among_equals(zone: Any) -> None:
    async def go() -> list[list[Host]]:
        r = resolver(zone.address)
        return [await resolve(r, "a.test", 25) for _ in range(40)]

    results = run(go)
    firsts = {hosts[0].address for hosts in results}
    assert firsts == {"127.0.0.2", "127.0.0.3"}  # both equal-preference hosts come first sometimes
    for hosts in results:
        assert [h.address for h in hosts[2:]] == ["127.0.0.4", "::1"]  # backup last, IPv4 before IPv6
        assert hosts[2].name == "backup.a.test" and hosts[2].port == 25


def test_mx_host_without_address_is_skipped(zone: Any) -> None:
    hosts = run(lambda: resolve(resolver(zone.address), "b.test", 2525))
    assert hosts == [Host("mx.b.test", "127.0.0.5", 2525)]


def test_implicit_mx_and_literals(zone: Any) -> None:
    r = resolver(zone.address)
    assert run(lambda: resolve(r, "imp.test", 25)) == [Host("imp.test", "127.0.0.6", 25)]
    assert run(lambda: resolve(r, "[127.0.0.9]", 25)) == [Host("127.0.0.9", "127.0.0.9", 25)]
    assert run(lambda: resolve(r, "[IPv6:::1]", 25)) == [Host("::1", "::1", 25)]


def test_null_mx_alone_bounces_but_mixed_is_ignored(zone: Any) -> None:
    r = resolver(zone.address)

    async def outcome(domain: str) -> Any:
        try:
            return await resolve(r, domain, 25)
        except MxError as e:
            return e.outcome

    o = run(lambda: outcome("null.test"))
    assert isinstance(o, Bounced) and o.reply.enhanced == "5.1.10" and o.bounce_class == "bad_domain"
    assert run(lambda: outcome("mixed.test")) == [Host("mx.b.test", "127.0.0.5", 25)]
    o = run(lambda: outcome("nx.test"))
    assert isinstance(o, Bounced) and o.reply.enhanced == "5.1.2"


def test_servfail_and_timeout_defer(dnsmasq: Any) -> None:
    for dns, timeout in ((dnsmasq(refused=True), "2s"), (dnsmasq(servfail=True), "0.3s")):
        r = resolver(dns.address, timeout=timeout)

        async def go(r: Resolver = r) -> Any:
            try:
                return await resolve(r, "a.test", 25)
            except MxError as e:
                return e.outcome

        o = run(go)
        assert isinstance(o, Deferred) and o.reply.enhanced == "4.4.3" and o.bounce_class == "dns"


def test_positive_answers_cached_for_their_ttl(zone: Any) -> None:
    clock = Clock()
    r = resolver(zone.address, clock)
    hits = metrics.dns_lookups_total.labels("cached")
    before = hits._value.get()

    async def go() -> None:
        for _ in range(5):
            await resolve(r, "a.test", 25)
        clock.now += 50  # within the MX TTL (300 s) and the negative floor (60 s, no SOA here)
        await resolve(r, "a.test", 25)

    run(go)
    assert zone.queries("a.test", "MX") == [("MX", "a.test")]
    assert len(zone.queries("mx1.a.test")) == 2  # A and AAAA, once each
    assert hits._value.get() - before >= 5 * 4
    clock.now += 251  # past the 300 s TTL
    run(lambda: resolve(r, "a.test", 25))
    assert len(zone.queries("a.test", "MX")) == 2


def test_negative_answers_cached(zone: Any) -> None:
    clock = Clock()
    r = resolver(zone.address, clock)

    async def go() -> list[str]:
        kinds = []
        for _ in range(3):
            try:
                await r.lookup("nx.test", "MX")
            except DnsFailure as e:
                kinds.append(e.kind)
        assert await r.lookup("imp.test", "MX") == ()  # no data, cached too
        assert await r.lookup("imp.test", "MX") == ()
        return kinds

    assert run(go) == ["nxdomain"] * 3
    assert len(zone.queries("nx.test")) == 1
    assert len(zone.queries("imp.test", "MX")) == 1


def test_failures_are_not_cached(dnsmasq: Any) -> None:
    dns = dnsmasq(refused=True)
    r = resolver(dns.address)

    async def go() -> None:
        for _ in range(2):
            with pytest.raises(DnsFailure) as e:
                await r.lookup("a.test", "MX")
            assert e.value.kind == "servfail" and e.value.temporary

    run(go)
    assert len(dns.queries("a.test", "MX")) == 2


def test_concurrent_lookups_share_one_query(zone: Any) -> None:
    r = resolver(zone.address)

    async def go() -> list[tuple[str, ...]]:
        return list(await asyncio.gather(*(r.lookup("a.test", "MX") for _ in range(50))))

    answers = run(go)
    assert len(set(answers)) == 1 and len(answers[0]) == 3
    assert len(zone.queries("a.test", "MX")) == 1
