# SPDX-License-Identifier: MIT
"""DANE (RFC 7672) end to end: Unbound validating a locally signed zone (AD), STARTTLS sinks.

Each failure of RFC 7672 §2 (a TLSA mismatch, no STARTTLS where TLSA records exist,
a bogus TLSA answer) defers with bounce class ``tls`` and never sends the message in
plaintext; an RRset of only unusable records still makes TLS mandatory.
"""

from __future__ import annotations

import datetime
import hashlib
import ssl
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fastmta.delivery import Attempt, Destination
from fastmta.delivery.dns import Resolver
from fastmta.delivery.mx import Host
from fastmta.delivery.smtp import SmtpDeliverer
from fastmta.delivery.tlspolicy import TlsPolicy
from fastmta.errors import Deferred, Delivered
from tests.fixtures.https import HttpsServer, sts_policy
from tests.integration.test_delivery_client import Bodies, envelope, make_cfg, run

pytestmark = pytest.mark.timeout(90)
D = Destination("dane.test", "dane.test")
MX = "mx1.dane.test"


def spki_sha256(cert: Any) -> str:
    c = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())
    spki = c.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def cert_sha256(pem: bytes) -> str:
    return hashlib.sha256(x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)).hexdigest()


def context(leaf: Any) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(ctx)
    return ctx


def zone(unbound: Any, port: int, tlsa: list[str], tamper: tuple[str, str] | None = None,
         extra: tuple[str, ...] = ()) -> Any:  # fmt: skip
    tlsa_rrs = [f"_{port}._tcp.mx1 IN TLSA {t}" for t in tlsa]
    records = ["@ IN MX 10 mx1", "mx1 IN A 127.0.0.2", *tlsa_rrs, *extra]
    return unbound("dane.test", records, tamper)


async def deliver(cfg: Any, bodies: Bodies, env: Any) -> Attempt:
    resolver = Resolver(cfg.dns)
    d = SmtpDeliverer(cfg, bodies, resolver, tls=TlsPolicy(cfg, resolver))
    try:
        return await d.deliver(D, env, list(range(len(env.rcpts))))
    finally:
        await d.close()


def attempt_with(ns: Any, port: int, **delivery: Any) -> Attempt:
    cfg = make_cfg(ns.address, port, tls="opportunistic", dane=True, **delivery)
    bodies = Bodies()
    env = envelope(bodies, ["b@dane.test"])
    result: Attempt = run(lambda: deliver(cfg, bodies, env))
    return result


def no_plaintext(sink: Any) -> None:
    assert sink.messages == []
    assert not any(c.split()[0] in ("MAIL", "RCPT", "DATA", "BDAT") for c in sink.commands), sink.commands


def test_dane_ee_ignores_names_expiry_and_ca(unbound: Any, sinks: Any, sink_port: int) -> None:
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    leaf = trustme.CA().issue_cert("not-the-mx.test", not_before=past, not_after=past + datetime.timedelta(1))
    mx1 = sinks("127.0.0.2", sink_port, starttls=True, tls_context=context(leaf))
    ns = zone(unbound, sink_port, [f"3 1 1 {spki_sha256(leaf)}"])
    attempt = attempt_with(ns, sink_port)
    assert isinstance(attempt.outcomes[0], Delivered), attempt.outcomes
    assert attempt.tls_policy == "dane" and mx1.messages[0].tls


def test_dane_ta_checks_the_chain_and_the_mx_name(unbound: Any, sinks: Any, sink_port: int) -> None:
    root = trustme.CA()
    issuer = root.create_child_ca()
    good = issuer.issue_cert(MX)
    ta = f"2 0 1 {cert_sha256(issuer.cert_pem.bytes())}"
    mx1 = sinks("127.0.0.2", sink_port, starttls=True, tls_context=context(good))
    attempt = attempt_with(zone(unbound, sink_port, [ta]), sink_port)
    assert isinstance(attempt.outcomes[0], Delivered), attempt.outcomes
    assert attempt.tls_policy == "dane" and len(mx1.messages) == 1
    mx1.tls_context = context(issuer.issue_cert("other.dane.test"))  # the right issuer, the wrong name
    attempt = attempt_with(zone(unbound, sink_port, [ta]), sink_port)
    o = attempt.outcomes[0]
    assert isinstance(o, Deferred) and o.bounce_class == "tls" and len(mx1.messages) == 1


@pytest.mark.parametrize("case", ["mismatch", "no_starttls", "bogus", "unusable_no_starttls"])
def test_dane_failures_defer_never_plaintext(unbound: Any, sinks: Any, sink_port: int, tls_ca: Any,
                                             case: str) -> None:  # fmt: skip
    leaf = tls_ca.issue_cert(MX)
    right = f"3 1 1 {spki_sha256(leaf)}"
    tlsa, tamper = [right], None
    if case == "mismatch":
        tlsa = [f"3 1 1 {spki_sha256(tls_ca.issue_cert(MX))}"]  # another key
    elif case == "bogus":  # the signed record changed afterwards: Unbound says SERVFAIL
        tamper = (right.split()[-1].upper(), "00" + right.split()[-1].upper()[2:])
    elif case == "unusable_no_starttls":
        tlsa = [f"1 1 1 {spki_sha256(leaf)}"]  # PKIX-EE: not usable for SMTP (RFC 7672 §3.1.3)
    starttls = case not in ("no_starttls", "unusable_no_starttls")
    mx1 = sinks("127.0.0.2", sink_port, starttls=starttls, tls_context=context(leaf))
    attempt = attempt_with(zone(unbound, sink_port, tlsa, tamper), sink_port)
    o = attempt.outcomes[0]
    assert isinstance(o, Deferred) and o.bounce_class == "tls", o
    assert attempt.tls_policy == "dane"
    no_plaintext(mx1)


def test_unusable_tlsa_still_requires_tls(unbound: Any, sinks: Any, sink_port: int, tls_ca: Any) -> None:
    """RFC 7672 §2.2: only unusable records → encrypt, without authentication; never plaintext."""
    leaf = tls_ca.issue_cert("someone-else.test")
    mx1 = sinks("127.0.0.2", sink_port, starttls=True, tls_context=context(leaf))
    attempt = attempt_with(zone(unbound, sink_port, [f"0 0 1 {'ab' * 32}"]), sink_port)
    assert isinstance(attempt.outcomes[0], Delivered) and mx1.messages[0].tls


def test_unsigned_answers_do_not_enable_dane(dnsmasq: Any, sinks: Any, sink_port: int) -> None:
    """dnsmasq does not validate (no AD): no DANE, whatever it says about TLSA."""
    ns = dnsmasq(mx=[("dane.test", MX, 10)], hosts={MX: "127.0.0.2"})
    mx1 = sinks("127.0.0.2", sink_port)
    attempt = attempt_with(ns, sink_port)
    assert isinstance(attempt.outcomes[0], Delivered) and attempt.tls_policy == "opportunistic"
    assert mx1.messages[0].tls is None


def test_dane_takes_precedence_over_mta_sts(unbound: Any, sinks: Any, sink_port: int, tls_ca: Any,
                                            tls_ca_file: str, https_server: Any) -> None:  # fmt: skip
    """An MTA-STS policy that names other MX hosts does not stop a DANE-authenticated one
    (RFC 8461 §2); when every MX host has TLSA records the policy is not even fetched."""
    srv: HttpsServer = https_server("127.0.0.11", ["mta-sts.dane.test"])
    srv.policy(sts_policy("enforce", "mx9.elsewhere.test"))
    leaf = trustme.CA().issue_cert("unrelated.test")
    mx1 = sinks("127.0.0.2", sink_port, starttls=True, tls_context=context(leaf))
    extra = ('_mta-sts IN TXT "v=STSv1; id=7;"', "mta-sts IN A 127.0.0.11")
    ns = zone(unbound, sink_port, [f"3 1 1 {spki_sha256(leaf)}"], extra=extra)
    attempt = attempt_with(ns, sink_port, tls_ca_file=tls_ca_file)
    assert isinstance(attempt.outcomes[0], Delivered) and attempt.tls_policy == "dane"
    assert len(mx1.messages) == 1 and srv.fetches() == 0


def test_hosts_without_tlsa_follow_mta_sts(unbound: Any, sinks: Any, sink_port: int, tls_ca: Any,
                                           tls_ca_file: str, https_server: Any) -> None:  # fmt: skip
    """Precedence is per MX host: mx1 has TLSA records (and is down), mx2 has none and is
    judged by the domain's MTA-STS policy, so its certificate must verify."""
    srv: HttpsServer = https_server("127.0.0.11", ["mta-sts.dane.test"])
    srv.policy(sts_policy("enforce", "*.dane.test"))
    mx2 = sinks("127.0.0.3", sink_port, starttls=True, tls_names=("mx2.dane.test",))
    sts = ('_mta-sts IN TXT "v=STSv1; id=7;"', "mta-sts IN A 127.0.0.11")
    extra = ("@ IN MX 20 mx2", "mx2 IN A 127.0.0.3", *sts)
    ns = zone(unbound, sink_port, [f"3 1 1 {'ab' * 32}"], extra=extra)
    attempt = attempt_with(ns, sink_port, tls_ca_file=tls_ca_file)
    assert isinstance(attempt.outcomes[0], Delivered), attempt.outcomes
    assert attempt.tls_policy == "mta-sts-enforce" and len(mx2.messages) == 1 and srv.fetches() == 1
    mx2.tls_context = context(trustme.CA().issue_cert("mx2.dane.test"))  # now from a CA nobody trusts
    o = attempt_with(ns, sink_port, tls_ca_file=tls_ca_file).outcomes[0]
    assert isinstance(o, Deferred) and o.bounce_class == "tls" and len(mx2.messages) == 1


def test_an_mx_lookup_that_times_out_makes_every_host_wait(sink_port: int) -> None:
    """Whether DANE applies is unknown when the MX answer cannot be had (its cached copy
    expired and the resolver does not answer): every host waits for a TLSA answer, so the
    delivery defers instead of going out with opportunistic TLS or none."""
    cfg = make_cfg("127.0.0.1:9", sink_port, tls="opportunistic", dane=True)
    policy = TlsPolicy(cfg, Resolver(cfg.dns))
    host = Host(MX, "127.0.0.2", sink_port)
    plan = run(lambda: policy.plan(D, [host]))
    assert plan.kind == "dane" and plan.tlsa == {MX: None}
