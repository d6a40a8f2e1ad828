# SPDX-License-Identifier: MIT
"""Where mail for a domain goes: MX records → ordered (host, address) pairs.

RFC 5321 §5.1: MX records by preference, random order among equal preferences,
then the A and AAAA records of each exchanger (IPv4 first). No MX at all means
the domain itself is the exchanger (implicit MX). A single ``MX 0 .`` is a null
MX (RFC 7505): the domain takes no mail, a permanent failure. Lookup failures
become a Deferred or Bounced outcome in ``MxError`` so the caller reports them
per recipient without guessing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from dataclasses import dataclass, field

from fastmta.delivery import replies
from fastmta.delivery.dns import DnsFailure, Resolver
from fastmta.errors import Bounced, Deferred

MAX_HOSTS = 10  # addresses tried per attempt, as Postfix's smtp_mx_address_limit


@dataclass(frozen=True, slots=True)
class Host:
    """One address to try: the exchanger's name (TLS checks it), the IP, the port, and
    the MX preference it came from (0 for routes, literals and implicit MX)."""

    name: str
    address: str
    port: int
    pref: int = field(default=0, compare=False)  # where it ranks, not which host it is

    def __str__(self) -> str:
        return f"{self.name}[{self.address}]:{self.port}"


class MxError(Exception):
    """No host to try; ``outcome`` is what every recipient of the domain gets."""

    def __init__(self, outcome: Deferred | Bounced) -> None:
        super().__init__(str(outcome.reply))
        self.outcome = outcome


def literal(name: str) -> str | None:
    """``[192.0.2.1]`` / ``[IPv6:::1]`` / a bare IP → the address, else None."""
    text = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def order_mx(records: tuple[str, ...], rng: random.Random | None = None) -> list[tuple[int, str]]:
    """``("10 mx1.a.test.", …)`` → [(pref, host)] sorted by preference, shuffled among equals."""
    shuffle = (rng or random).random
    parsed = []
    for rec in records:
        pref_s, _, host = rec.partition(" ")
        try:
            parsed.append((int(pref_s), shuffle(), host.rstrip(".").lower()))
        except ValueError:
            continue
    parsed.sort()
    return [(pref, host) for pref, _, host in parsed]


async def resolve(resolver: Resolver, domain: str, port: int, max_hosts: int = MAX_HOSTS) -> list[Host]:
    """The hosts to try for ``domain``, best first; raises MxError when there are none."""
    lit = literal(domain)
    if lit is not None:
        return [Host(lit, lit, port)]
    try:
        records = await resolver.lookup(domain, "MX")
    except DnsFailure as e:
        if e.temporary:
            raise MxError(Deferred(replies.DNS_TEMPFAIL, "dns")) from None
        raise MxError(Bounced(replies.NXDOMAIN, "bad_domain")) from None
    if not records:  # implicit MX (RFC 5321 §5.1)
        hosts = await addresses(resolver, domain, port, max_hosts)
        if hosts is None:
            raise MxError(Deferred(replies.DNS_TEMPFAIL, "dns"))
        if not hosts:
            raise MxError(Bounced(replies.NO_ADDRESS, "bad_domain"))
        return hosts
    exchangers = order_mx(records)
    if any(host in ("", ".") for _, host in exchangers):
        real = [(p, h) for p, h in exchangers if h not in ("", ".")]
        if not real:
            raise MxError(Bounced(replies.NULL_MX, "bad_domain"))
        exchangers = real  # RFC 7505 §3: a null MX mixed with others is ignored
    found = await asyncio.gather(
        *(addresses(resolver, h, port, max_hosts, pref) for pref, h in exchangers[:max_hosts])
    )
    out: list[Host] = []
    for hosts in found:
        out.extend(hosts or ())
    if not out:
        raise MxError(Deferred(replies.DNS_TEMPFAIL if None in found else replies.MX_NO_ADDRESS, "dns"))
    return out[:max_hosts]


async def addresses(
    resolver: Resolver, name: str, port: int, limit: int = MAX_HOSTS, pref: int = 0
) -> list[Host] | None:
    """A then AAAA of ``name`` as Hosts; ``[]`` when it has none, None on a temporary failure."""
    lit = literal(name)
    if lit is not None:
        return [Host(lit, lit, port, pref)]
    found = await asyncio.gather(
        resolver.lookup(name, "A"), resolver.lookup(name, "AAAA"), return_exceptions=True
    )
    out: list[Host] = []
    temporary = False
    for result in found:
        if isinstance(result, DnsFailure):
            temporary = temporary or result.temporary
        elif isinstance(result, BaseException):
            raise result
        else:
            out.extend(Host(name, addr, port, pref) for addr in result)
    if not out and temporary:
        return None
    return out[:limit]
