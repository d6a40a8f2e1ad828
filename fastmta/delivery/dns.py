# SPDX-License-Identifier: MIT
"""DNS lookups for delivery: dnspython's async resolver behind a TTL cache.

Positive answers are cached for their TTL, negative ones (NXDOMAIN, no data) for
the SOA minimum when the server sends one, else ``NEGATIVE_FLOOR``; server
failures and timeouts are not cached, so a broken zone is asked again on the
next attempt. Concurrent lookups of the same name share one query, so a burst of
deliveries to one domain sends one packet, not hundreds.

Every query carries the AD flag (RFC 6840 §5.7), so a validating resolver says
whether it validated the answer; ``lookup_secure`` hands that bit to DANE, which
trusts only what the configured resolver validated. No DO flag: the signatures
themselves are the resolver's business, and answers stay small.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.nameserver
import dns.rdatatype
import dns.resolver

from fastmta import metrics
from fastmta.config import DnsConfig

NEGATIVE_FLOOR = 60.0  # seconds a negative answer is kept when the server gives no SOA
MAX_TTL = 86400.0  # never trust an answer for longer than a day
MAX_ENTRIES = 100_000  # cache size bound; the oldest entries go first

OK, NODATA, NXDOMAIN, SERVFAIL, TIMEOUT = "ok", "nodata", "nxdomain", "servfail", "timeout"
RESULTS = (OK, NODATA, NXDOMAIN, SERVFAIL, TIMEOUT)  # the ``result`` label, plus "cached"


class DnsFailure(Exception):
    """A lookup that found nothing usable: ``kind`` is nxdomain, servfail or timeout."""

    def __init__(self, kind: str, name: str, rdtype: str) -> None:
        super().__init__(f"{kind} for {name} {rdtype}")
        self.kind = kind
        self.name = name
        self.rdtype = rdtype

    @property
    def temporary(self) -> bool:
        return self.kind != NXDOMAIN


@dataclass(frozen=True, slots=True)
class _Entry:
    expires: float
    records: tuple[str, ...]  # rdata as text; () = no data
    nxdomain: bool
    secure: bool = False  # the resolver set AD: a DNSSEC-validated answer (or denial)


class Resolver:
    """``await resolver.lookup(name, "MX")`` → rdata texts; raises DnsFailure."""

    def __init__(self, cfg: DnsConfig, clock: Callable[[], float] = time.monotonic) -> None:
        if cfg.nameservers:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in cfg.nameservers]
        else:
            try:
                self._resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration:  # no usable /etc/resolv.conf
                self._resolver = dns.asyncresolver.Resolver(configure=False)
                self._resolver.nameservers = ["127.0.0.1"]
        self._resolver.timeout = cfg.timeout
        self._resolver.lifetime = cfg.timeout
        self._resolver.cache = None
        self._resolver.flags = dns.flags.RD | dns.flags.AD
        self._clock = clock
        self._cache: dict[tuple[str, str], _Entry] = {}
        self._inflight: dict[tuple[str, str], asyncio.Future[_Entry]] = {}
        self._hit = metrics.bound(metrics.dns_lookups_total, "cached")
        self._results = {
            r: metrics.bound(metrics.dns_lookups_total, r) for r in (OK, NODATA, NXDOMAIN, SERVFAIL, TIMEOUT)
        }
        self._seconds = {t: metrics.bound(metrics.dns_lookup_seconds, t) for t in ("MX", "A", "AAAA")}

    async def lookup(self, name: str, rdtype: str) -> tuple[str, ...]:
        """Records of ``name``/``rdtype`` as text (``()`` when the name has none of that type)."""
        return _result(await self._entry(name, rdtype), (name, rdtype))

    async def lookup_secure(self, name: str, rdtype: str) -> tuple[tuple[str, ...], bool]:
        """``lookup`` plus whether the resolver validated the answer (the AD bit)."""
        entry = await self._entry(name, rdtype)
        return _result(entry, (name, rdtype)), entry.secure

    async def _entry(self, name: str, rdtype: str) -> _Entry:
        key = (name.lower().rstrip("."), rdtype)
        entry = self._cache.get(key)
        if entry is not None:
            if entry.expires > self._clock():
                self._hit.inc()
                return entry
            del self._cache[key]
        fut = self._inflight.get(key)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._inflight[key] = fut
            try:
                entry = await self._query(*key)
            except BaseException as e:  # joiners get a DnsFailure even if this task is cancelled
                fut.set_exception(e if isinstance(e, DnsFailure) else DnsFailure(TIMEOUT, *key))
                fut.exception()  # retrieved: no "never retrieved" warning when nobody joined
                raise
            finally:
                del self._inflight[key]
            fut.set_result(entry)
            if len(self._cache) >= MAX_ENTRIES:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = entry
        else:
            entry = await asyncio.shield(fut)
        return entry

    async def _query(self, name: str, rdtype: str) -> _Entry:
        start = self._clock()
        try:
            answer = await self._resolver.resolve(name + ".", rdtype, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as e:
            self._done(NXDOMAIN, rdtype, start)
            responses = list(e.responses().values())  # type: ignore[no-untyped-call]
            return _Entry(start + _negative_ttl(responses), (), True, _ad(responses))
        except dns.exception.Timeout:
            self._done(TIMEOUT, rdtype, start)
            raise DnsFailure(TIMEOUT, name, rdtype) from None
        except dns.exception.DNSException:  # SERVFAIL/REFUSED from every server, bad packets
            self._done(SERVFAIL, rdtype, start)
            raise DnsFailure(SERVFAIL, name, rdtype) from None
        secure = _ad([answer.response])
        if answer.rrset is None:
            self._done(NODATA, rdtype, start)
            return _Entry(start + _negative_ttl([answer.response]), (), False, secure)
        self._done(OK, rdtype, start)
        ttl = min(float(answer.rrset.ttl), MAX_TTL)
        return _Entry(start + ttl, tuple(r.to_text() for r in answer.rrset), False, secure)

    def _done(self, result: str, rdtype: str, start: float) -> None:
        self._results[result].inc()
        seconds = self._seconds.get(rdtype) or metrics.bound(metrics.dns_lookup_seconds, rdtype)
        seconds.observe(max(self._clock() - start, 0.0))

    def clear(self) -> None:
        """Forget every cached answer (config reload, tests)."""
        self._cache.clear()


def _result(entry: _Entry, key: tuple[str, str]) -> tuple[str, ...]:
    if entry.nxdomain:
        raise DnsFailure(NXDOMAIN, *key)
    return entry.records


def _ad(responses: list[object]) -> bool:
    """Every response came with the AD bit: the resolver validated it."""
    return bool(responses) and all(int(getattr(r, "flags", 0)) & dns.flags.AD for r in responses)


def _negative_ttl(responses: object) -> float:
    """RFC 2308 §5: min(SOA TTL, SOA minimum) from the authority section, else the floor."""
    for resp in responses:  # type: ignore[attr-defined]
        for rrset in getattr(resp, "authority", ()):
            if rrset.rdtype == dns.rdatatype.SOA:
                return float(min(rrset.ttl, rrset[0].minimum, MAX_TTL))
    return NEGATIVE_FLOOR
