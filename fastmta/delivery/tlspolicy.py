# SPDX-License-Identifier: MIT
"""Outbound TLS policy: which protection a next hop gets, and setting it up on a session.

Per destination, ``plan()`` decides before connecting (docs/tls-policy.md):

* a ``[[route]]`` next hop: its ``tls``, else ``[delivery] tls``; no DNS policies;
* DANE (``dane = true``) for an MX host when the MX answer was DNSSEC-validated and
  the host has a validated TLSA RRset: its certificate must match a record
  (RFC 7672); DANE wins over MTA-STS (RFC 8461 §2);
* MTA-STS (``mta_sts = true``) when the domain publishes a policy: ``enforce``
  keeps only the MX hosts the policy names and verifies their certificates for the
  MX name; ``testing`` tries the same but delivers anyway (and reports);
* else ``[delivery] tls``: opportunistic, required (verified) or none.

``secure()`` then runs STARTTLS on one session as the plan says for that host, or
raises ``HostError`` (kind "tls"): a policy failure never falls back to plaintext.
Every session under a policy counts into TLS-RPT (``fastmta.delivery.tlsrpt``) and
``fastmta_tls_policy_total``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from fastmta import metrics
from fastmta.config import Config
from fastmta.delivery import Destination, replies
from fastmta.delivery.client import HostError, SmtpClient
from fastmta.delivery.dane import Tlsa, check, parse_tlsa, peer_chain
from fastmta.delivery.dns import DnsFailure, Resolver
from fastmta.delivery.https import HttpError, HttpsClient
from fastmta.delivery.mtasts import (
    MAX_POLICY_BYTES,
    Policy,
    PolicyCache,
    PolicyError,
    parse_policy,
    parse_txt,
)
from fastmta.delivery.mx import Host, literal
from fastmta.delivery.tlsrpt import TlsReports
from fastmta.errors import Reply

log = logging.getLogger("fastmta.delivery")

NO_TLS_MEMORY = 3600.0  # seconds a host whose opportunistic TLS handshake failed is tried in plaintext
FETCH_RETRY = 300.0  # seconds before a failed policy fetch is tried again (the cached policy holds)

# what secure() does for one host
M_NONE, M_OPPORTUNISTIC, M_VERIFY, M_TESTING = "none", "opportunistic", "verify", "testing"
M_DANE, M_DANE_ENCRYPT, M_DANE_FAIL = "dane", "dane-encrypt", "dane-fail"
VERIFIED_MODES = (M_VERIFY, M_DANE)  # what REQUIRETLS accepts (RFC 8689 §4.2.1)


@dataclass(slots=True)
class Plan:
    """What one destination gets: the ``tls_policy`` log value and each host's mode."""

    kind: str  # mta-sts-enforce | mta-sts-testing | dane | required | opportunistic | none
    domain: str = ""  # the policy domain (TLS-RPT), "" for routes
    fallback: str = M_OPPORTUNISTIC  # hosts without DANE or MTA-STS
    sts: Policy | None = None
    # MX host → its TLSA records; None: the lookup failed under a validated MX (unusable host)
    tlsa: dict[str, tuple[Tlsa, ...] | None] = field(default_factory=dict)
    relaxed: bool = False  # the message says "TLS-Required: No" (RFC 8689 §5)

    def mode(self, host: Host) -> str:
        if host.name in self.tlsa:
            records = self.tlsa[host.name]
            if self.relaxed:
                return M_OPPORTUNISTIC
            if records is None:
                return M_DANE_FAIL
            return M_DANE if any(r.usable for r in records) else M_DANE_ENCRYPT
        if self.sts is not None:
            if self.relaxed:
                return M_OPPORTUNISTIC
            return M_VERIFY if self.sts.mode == "enforce" else M_TESTING
        return self.fallback

    def label(self, host: Host) -> str:
        """The ``tls_policy`` value of a session to ``host``."""
        mode = self.mode(host)
        if mode in (M_DANE, M_DANE_ENCRYPT, M_DANE_FAIL):
            return "dane"
        if self.sts is not None and mode in (M_VERIFY, M_TESTING):
            return "mta-sts-enforce" if mode == M_VERIFY else "mta-sts-testing"
        return {M_VERIFY: "required", M_OPPORTUNISTIC: "opportunistic"}.get(mode, "none")


_FALLBACK = {"none": M_NONE, "opportunistic": M_OPPORTUNISTIC, "required": M_VERIFY}


class TlsPolicy:
    """Plans and applies outbound TLS; owns the MTA-STS cache and the TLS contexts."""

    def __init__(self, cfg: Config, resolver: Resolver, cache: PolicyCache | None = None,
                 reports: TlsReports | None = None,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.cfg = cfg
        self.resolver = resolver
        self.cache = cache or PolicyCache(clock=clock)
        self.reports = reports
        self.clock = clock
        self._verified: ssl.SSLContext | None = None
        self._unverified = _unverified_context()
        self._https: HttpsClient | None = None
        self._fetching: dict[str, asyncio.Future[Policy | None]] = {}
        self._fetch_failed: dict[tuple[str, str], float] = {}  # (domain, id) → retry after
        self._no_tls: dict[tuple[str, int], float] = {}  # opportunistic TLS broken → plaintext until

    def reload(self, cfg: Config, resolver: Resolver) -> None:
        """SIGHUP: the CA file is read again; cached policies stay."""
        self.cfg = cfg
        self.resolver = resolver
        self._verified = None
        https, self._https = self._https, None
        if https is not None:
            asyncio.get_running_loop().create_task(https.close())

    async def close(self) -> None:
        if self._https is not None:
            await self._https.close()
        await self.cache.flush()

    def verified_context(self) -> ssl.SSLContext:
        """Chain and host name checked against the system CAs or ``tls_ca_file``."""
        if self._verified is None:
            self._verified = ssl.create_default_context(cafile=self.cfg.delivery.tls_ca_file or None)
        return self._verified

    async def post(self, url: str, body: bytes, content_type: str) -> None:
        """TLS-RPT's https: reports go out through the same verified client."""
        await self.https().post(url, body, content_type)

    def https(self) -> HttpsClient:
        if self._https is None:
            self._https = HttpsClient(self.resolver, self.verified_context())
        return self._https

    # --- planning ----------------------------------------------------------------------------
    async def plan(self, dest: Destination, hosts: list[Host], relaxed: bool = False) -> Plan:
        """The plan for ``dest`` whose hosts are ``hosts`` (already resolved)."""
        d = self.cfg.delivery
        route = dest.route
        if route is not None:
            kind = route.tls or d.tls
            return Plan(kind, fallback=_FALLBACK[kind])
        plan = Plan(d.tls, dest.domain, _FALLBACK[d.tls], relaxed=relaxed)
        if literal(dest.domain) is not None:
            return plan
        if d.dane:
            plan.tlsa = await self._tlsa(dest.domain, hosts)
        if d.mta_sts and not all(h.name in plan.tlsa for h in hosts):  # DANE hosts ignore it
            plan.sts = await self.sts_policy(dest.domain)
        if any(plan.tlsa.values()) or None in plan.tlsa.values():
            plan.kind = "dane"
        elif plan.sts is not None:
            plan.kind = f"mta-sts-{plan.sts.mode}"
        return plan

    def hosts_for(self, plan: Plan, hosts: list[Host]) -> list[Host]:
        """RFC 8461 §4.1: under ``enforce``, only the MX hosts the policy names (DANE hosts
        are judged by their TLSA records instead); the others are reported and skipped."""
        sts = plan.sts
        if sts is None or sts.mode != "enforce" or plan.relaxed:
            return hosts
        kept = [h for h in hosts if h.name in plan.tlsa or sts.matches(h.name)]
        for h in hosts:
            if h not in kept:
                self._report(plan, h, "validation-failure")
                self._count("mta-sts-enforce", False)
        return kept

    async def _tlsa(self, domain: str, hosts: list[Host]) -> dict[str, tuple[Tlsa, ...] | None]:
        """TLSA records per host, only when the MX answer and the TLSA answer are validated
        (RFC 7672 §2.2); a failed lookup under a secure MX makes the host unusable (None)."""
        try:
            _, secure = await self.resolver.lookup_secure(domain, "MX")
        except DnsFailure as e:
            if e.temporary:  # whether DANE applies is unknown: every host waits, never plaintext
                return {host.name: None for host in hosts}
            return {}
        if not secure:
            return {}
        out: dict[str, tuple[Tlsa, ...] | None] = {}
        for host in hosts:
            if host.name in out:
                continue
            try:
                records, ok = await self.resolver.lookup_secure(f"_{host.port}._tcp.{host.name}", "TLSA")
            except DnsFailure as e:
                if e.temporary:
                    out[host.name] = None  # SERVFAIL: bogus or unreachable; never guess
                continue
            if ok and records:
                out[host.name] = tuple(t for t in map(parse_tlsa, records) if t is not None)
        return out

    async def sts_policy(self, domain: str) -> Policy | None:
        """The MTA-STS policy in force for ``domain`` (RFC 8461 §5.1), or None.

        The TXT record says whether there is a policy and which one (its id); a new
        id is fetched, a known one comes from the cache. Without a TXT record, or when
        the fetch fails, an unexpired cached policy still holds.
        """
        cached = self.cache.get(domain)
        try:
            ident = parse_txt(await self.resolver.lookup(f"_mta-sts.{domain}", "TXT"))
        except DnsFailure:
            ident = None
        if ident is None or (cached is not None and cached.id == ident):
            return cached
        if self._fetch_failed.get((domain, ident), 0.0) > self.clock():
            return cached
        fut = self._fetching.get(domain)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._fetching[domain] = fut
            try:
                policy = await self._fetch(domain, ident)
            finally:
                del self._fetching[domain]
            fut.set_result(policy)
        else:
            policy = await asyncio.shield(fut)
        if policy is None:
            return cached
        return policy if policy.mode != "none" else None

    async def _fetch(self, domain: str, ident: str) -> Policy | None:
        url = f"https://mta-sts.{domain}/.well-known/mta-sts.txt"
        try:
            body = await self.https().get(url, MAX_POLICY_BYTES, content_type="text/plain")
            policy = parse_policy(body, domain, ident, self.clock())
        except (HttpError, PolicyError) as e:
            kind = e.kind if isinstance(e, HttpError) else "invalid"
            metrics.bound(metrics.mta_sts_fetches_total, kind).inc()
            log.warning("MTA-STS policy of %s not fetched: %s", domain, e)
            self._fetch_failed[(domain, ident)] = self.clock() + FETCH_RETRY
            if self.reports is not None:
                result = "sts-webpki-invalid" if kind == "tls_error" else "sts-policy-fetch-error"
                if kind == "invalid":
                    result = "sts-policy-invalid"
                self.reports.record(domain, "sts", (), (), result, "", "")
            return None
        metrics.bound(metrics.mta_sts_fetches_total, "ok").inc()
        self.cache.put(policy)
        return policy

    # --- one session ----------------------------------------------------------------------------
    async def secure(self, client: SmtpClient, host: Host, plan: Plan,
                     reopen: Callable[[], Awaitable[SmtpClient]], helo: str) -> SmtpClient:  # fmt: skip
        """Bring ``client`` to the protection ``plan`` gives ``host``; HostError if it cannot be.
        ``helo`` is the name the connection's source says (its pool's EHLO, or ``hostname``)."""
        mode = plan.mode(host)
        label = client.policy = plan.label(host)
        if mode == M_NONE:
            return client
        if mode == M_OPPORTUNISTIC:
            return await self._opportunistic(client, host, reopen, helo)
        if mode == M_DANE_FAIL:
            self._fail(plan, host, label, "dnssec-invalid")
            raise HostError(Reply(451, "4.7.5", f"TLSA lookup for {host.name} failed (DNSSEC)"), "tls")
        if "STARTTLS" not in client.ext:
            self._fail(plan, host, label, "starttls-not-supported")
            if mode == M_TESTING:
                return client
            raise HostError(replies.TLS_REQUIRED, "tls")
        if mode in (M_DANE, M_DANE_ENCRYPT):
            try:
                await client.starttls(self._unverified, host.name, helo)
            except HostError as e:
                self._fail(plan, host, label, "validation-failure")
                raise HostError(e.reply, "tls") from None
            if mode == M_DANE:
                ssl_obj = client.ssl_object()
                failure = check(plan.tlsa[host.name] or (), peer_chain(ssl_obj), (host.name,))
                if failure is not None:
                    client.abort()
                    self._fail(plan, host, label, failure)
                    raise HostError(
                        Reply(451, "4.7.5", f"DANE: the certificate of {host} matches no TLSA record"), "tls"
                    )
                client.verified = True
            self._ok(plan, host, label)
            return client
        try:  # M_VERIFY, M_TESTING: the WebPKI, for the MX name
            await client.starttls(self.verified_context(), host.name, helo)
        except HostError as e:
            self._fail(plan, host, label, _result_type(e.reply.text))
            if mode == M_TESTING:  # report, then deliver as without a policy
                client = await reopen()
                client.policy = label
                return await self._opportunistic(client, host, reopen, helo)
            raise HostError(e.reply, "tls") from None
        client.verified = mode == M_VERIFY
        self._ok(plan, host, label)
        return client

    async def _opportunistic(
        self, client: SmtpClient, host: Host, reopen: Callable[[], Awaitable[SmtpClient]], helo: str
    ) -> SmtpClient:
        """RFC 7435: encrypt when offered, never refuse for a certificate; a host whose
        handshake broke is spoken to in plaintext for NO_TLS_MEMORY seconds."""
        key = (host.address, host.port)
        if "STARTTLS" not in client.ext:
            return client
        until = self._no_tls.get(key)
        if until is not None and until >= time.monotonic():
            return client
        try:
            await client.starttls(self._unverified, host.name, helo)
        except HostError as e:  # as MTAs do: go on in plaintext
            self._no_tls[key] = time.monotonic() + NO_TLS_MEMORY
            if e.kind != "starttls" or not client.usable:
                client.abort()
                policy = client.policy
                client = await reopen()
                client.policy = policy
        return client

    # --- accounting -------------------------------------------------------------------------------
    def _ok(self, plan: Plan, host: Host, label: str) -> None:
        self._count(label, True)
        self._report(plan, host, None)

    def _fail(self, plan: Plan, host: Host, label: str, result: str) -> None:
        self._count(label, False)
        self._report(plan, host, result)
        log.info("TLS policy %s failed for %s: %s", label, host, result)

    def _count(self, label: str, ok: bool) -> None:
        metrics.bound(metrics.tls_policy_total, label, "ok" if ok else "failed").inc()

    def _report(self, plan: Plan, host: Host, result: str | None) -> None:
        if self.reports is None or not plan.domain or plan.relaxed:
            return
        if host.name in plan.tlsa:
            records = plan.tlsa[host.name] or ()
            strings = tuple(f"{r.usage} {r.selector} {r.mtype} {r.data.hex()}" for r in records)
            self.reports.record(plan.domain, "tlsa", strings, (host.name,), result, host.name, host.address)
        elif plan.sts is not None:
            self.reports.record(plan.domain, "sts", plan.sts.text, plan.sts.mx, result, host.name,
                                host.address)  # fmt: skip


_TLS_REQUIRED_NO = re.compile(rb"^TLS-Required:[ \t]*No[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)


def tls_optional(message: bytes) -> bool:
    """The header says ``TLS-Required: No`` (RFC 8689 §5): the sender asks that the
    recipient domain's TLS policy (MTA-STS, DANE) not stop delivery.

    On the delivery path: two ``find``s bounded to the header block, and the regex only
    when one hits (a field name in odd mixed case is missed; the policy then holds).
    """
    end = message.find(b"\r\n\r\n")
    end = end if end >= 0 else len(message)
    if message.find(b"equired:", 0, end) < 0 and message.find(b"EQUIRED:", 0, end) < 0:
        return False
    return _TLS_REQUIRED_NO.search(message, 0, end) is not None


def _unverified_context() -> ssl.SSLContext:
    """No verification (RFC 7435, and DANE, which checks the chain itself)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _result_type(text: str) -> str:
    """An OpenSSL verification failure as an RFC 8460 §4.3 result type."""
    low = text.lower()
    if "hostname mismatch" in low or "not valid for" in low:
        return "certificate-host-mismatch"
    if "expired" in low:
        return "certificate-expired"
    if "unable to get local issuer" in low or "self-signed" in low or "self signed" in low:
        return "certificate-not-trusted"
    return "validation-failure"
