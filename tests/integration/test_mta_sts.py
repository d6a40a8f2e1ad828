# SPDX-License-Identifier: MIT
"""MTA-STS (RFC 8461) end to end on loopback: dnsmasq for MX/TXT/A, a real HTTPS policy
server on 127.0.0.11:443 with a trustme certificate, real STARTTLS sinks.

Every failure of RFC 8461 §4 under ``enforce`` must defer with bounce class ``tls``
and never hand the message over in plaintext: each such test checks that the sink
saw no MAIL command at all.
"""

from __future__ import annotations

import datetime
import json
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme

from fastmta import metrics
from fastmta.delivery import Attempt, Destination
from fastmta.delivery.dns import Resolver
from fastmta.delivery.mtasts import PolicyCache
from fastmta.delivery.smtp import SmtpDeliverer
from fastmta.delivery.tlspolicy import TlsPolicy
from fastmta.delivery.tlsstate import StateFile
from fastmta.errors import Deferred, Delivered
from tests.fixtures.https import HttpsServer, sts_policy
from tests.integration.test_delivery_client import BODY, Bodies, envelope, make_cfg, run

pytestmark = pytest.mark.timeout(90)
A = Destination("a.test", "a.test")
POLICY_HOST = "127.0.0.11"


def zone(dnsmasq: Any, ident: str = "1", **extra: Any) -> Any:
    return dnsmasq(
        mx=[("a.test", "mx1.a.test", 10)],
        hosts={"mx1.a.test": "127.0.0.2", "mta-sts.a.test": POLICY_HOST},
        txt={"_mta-sts.a.test": f"v=STSv1; id={ident};", **extra},
    )


def policy_for(cfg: Any, dns: Any, cache: PolicyCache | None = None) -> TlsPolicy:
    return TlsPolicy(cfg, Resolver(cfg.dns), cache)


async def deliver(tls: TlsPolicy, bodies: Bodies, env: Any, dest: Destination = A) -> Attempt:
    d = SmtpDeliverer(tls.cfg, bodies, tls.resolver, tls=tls)
    try:
        return await d.deliver(dest, env, list(range(len(env.rcpts))))
    finally:
        await d.close()


class Sts:
    """a.test for one test: its zone (one dnsmasq per TXT ``ident``), its MX sink and one
    message delivered the way the scheduler does, through a TlsPolicy over opportunistic TLS."""

    def __init__(self, dnsmasq: Any, sinks: Any, sink_port: int, tls_ca_file: str) -> None:
        self._dnsmasq, self._sinks, self.port, self.ca_file = dnsmasq, sinks, sink_port, tls_ca_file
        self._zones: dict[str, Any] = {}
        self.bodies = Bodies()
        self.env = envelope(self.bodies, ["b@a.test"])

    def zone(self, ident: str = "1") -> Any:
        if ident not in self._zones:
            self._zones[ident] = zone(self._dnsmasq, ident)
        return self._zones[ident]

    def mx(self, *names: str, starttls: bool = True, **script: Any) -> Any:
        """mx1.a.test on 127.0.0.2, offering STARTTLS with a certificate for ``names``."""
        return self._sinks("127.0.0.2", self.port, starttls=starttls, tls_names=names, **script)

    def policy(self, ident: str = "1", cache: PolicyCache | None = None, **delivery: Any) -> TlsPolicy:
        dns = self.zone(ident)
        cfg = make_cfg(dns.address, self.port, tls="opportunistic", tls_ca_file=self.ca_file, **delivery)
        return policy_for(cfg, dns, cache)

    def deliver(self, tls: TlsPolicy | None = None, env: Any = None) -> Attempt:
        """The message (or ``env``) delivered once through ``tls`` (default: a new ``policy()``)."""
        policy = tls or self.policy()
        return run(lambda: deliver(policy, self.bodies, env or self.env))


@pytest.fixture
def sts(dnsmasq: Any, sinks: Any, sink_port: int, tls_ca_file: str) -> Sts:
    return Sts(dnsmasq, sinks, sink_port, tls_ca_file)


def no_plaintext(sink: Any) -> None:
    assert sink.messages == []
    assert not any(c.split()[0] in ("MAIL", "RCPT", "DATA", "BDAT") for c in sink.commands), sink.commands


@pytest.fixture
def policy_server(https_server: Any) -> HttpsServer:
    srv: HttpsServer = https_server(POLICY_HOST, ["mta-sts.a.test"])
    return srv


def fetches(result: str) -> float:
    return metrics.mta_sts_fetches_total.labels(result)._value.get()


def test_enforce_verified_delivery_and_cache(sts: Sts, policy_server: HttpsServer) -> None:
    policy_server.policy(sts_policy("enforce", "mx1.a.test"))
    mx1 = sts.mx("mx1.a.test")
    tls = sts.policy()
    ok_before = fetches("ok")
    for i in range(2):
        attempt = sts.deliver(tls, envelope(sts.bodies, ["b@a.test"], msg_id=f"m{i}"))
        assert isinstance(attempt.outcomes[0], Delivered), attempt.outcomes
        assert attempt.tls_policy == "mta-sts-enforce" and attempt.tls in ("TLSv1.2", "TLSv1.3")
    assert len(mx1.messages) == 2 and all(m.tls for m in mx1.messages)
    assert policy_server.fetches() == 1  # the second delivery used the cached policy (same TXT id)
    assert policy_server.requests[0].host == "mta-sts.a.test"
    assert fetches("ok") == ok_before + 1


@pytest.mark.parametrize("failure", ["name", "expired", "untrusted", "no_starttls"])
def test_enforce_failures_defer_never_plaintext(sts: Sts, tls_ca: Any, policy_server: HttpsServer,
                                                failure: str) -> None:  # fmt: skip
    policy_server.policy(sts_policy("enforce", "mx1.a.test"))
    if failure == "no_starttls":
        mx1 = sts.mx(starttls=False)
    else:
        mx1 = sts.mx(tls_context=_server_ctx(tls_ca, failure))
    attempt = sts.deliver()
    o = attempt.outcomes[0]
    assert isinstance(o, Deferred) and o.bounce_class == "tls", o
    assert attempt.tls_policy == "mta-sts-enforce"
    no_plaintext(mx1)


def _server_ctx(ca: Any, failure: str) -> ssl.SSLContext:
    """A sink certificate that fails MTA-STS verification in one way."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    if failure == "name":
        ca.issue_cert("other.a.test").configure_cert(ctx)
    elif failure == "expired":
        past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
        cert = ca.issue_cert("mx1.a.test", not_before=past, not_after=past + datetime.timedelta(days=1))
        cert.configure_cert(ctx)
    else:
        trustme.CA().issue_cert("mx1.a.test").configure_cert(ctx)  # a CA nobody trusts
    return ctx


def test_enforce_mx_mismatch_never_connects(sts: Sts, policy_server: HttpsServer) -> None:
    policy_server.policy(sts_policy("enforce", "*.elsewhere.test"))
    mx1 = sts.mx("mx1.a.test")
    o = sts.deliver().outcomes[0]
    assert isinstance(o, Deferred) and o.bounce_class == "tls" and o.reply.enhanced == "4.7.5"
    assert mx1.connections == 0


def test_testing_mode_delivers_despite_a_bad_certificate(sts: Sts, policy_server: HttpsServer) -> None:
    policy_server.policy(sts_policy("testing", "mx1.a.test"))
    mx1 = sts.mx("wrong.a.test")
    failed = metrics.tls_policy_total.labels("mta-sts-testing", "failed")._value.get()
    attempt = sts.deliver()
    assert isinstance(attempt.outcomes[0], Delivered) and attempt.tls_policy == "mta-sts-testing"
    assert mx1.messages[0].tls  # encrypted without verification, as opportunistic TLS is
    assert metrics.tls_policy_total.labels("mta-sts-testing", "failed")._value.get() == failed + 1


@pytest.mark.parametrize("answer", ["404", "redirect", "too_large", "bad_type", "invalid", "down"])
def test_fetch_failure_without_cache_delivers_as_without_policy(sts: Sts, https_server: Any,
                                                                answer: str) -> None:  # fmt: skip
    if answer != "down":
        srv = https_server(POLICY_HOST, ["mta-sts.a.test"])
        good = sts_policy("enforce", "mx1.a.test")
        srv.routes["/.well-known/mta-sts.txt"] = {
            "404": (404, "text/plain", b"no", {}),
            "redirect": (301, "text/plain", b"", {"Location": "https://mta-sts.a.test/other.txt"}),
            "too_large": (200, "text/plain", good.encode() + b"x: " + b"y" * 65536 + b"\r\n", {}),
            "bad_type": (200, "text/html", good.encode(), {}),
            "invalid": (200, "text/plain", b"version: STSv2\r\nmode: enforce\r\nmx: mx1.a.test\r\n", {}),
        }[answer]
        srv.routes["/other.txt"] = (200, "text/plain", good.encode(), {})
    mx1 = sts.mx("wrong.a.test")
    attempt = sts.deliver()
    assert isinstance(attempt.outcomes[0], Delivered), attempt.outcomes
    assert attempt.tls_policy == "opportunistic" and len(mx1.messages) == 1
    if answer == "redirect":
        assert [r.path for r in srv.requests] == ["/.well-known/mta-sts.txt"]  # never followed


def test_fetch_failure_with_cached_policy_still_enforces(sts: Sts, policy_server: HttpsServer,
                                                         tmp_path: Path) -> None:  # fmt: skip
    """The policy survives a restart (its file) and a fetch failure for a new TXT id."""
    state = tmp_path / "mta-sts.json"
    policy_server.policy(sts_policy("enforce", "mx1.a.test"))
    mx1 = sts.mx("mx1.a.test")
    attempt = sts.deliver(sts.policy("1", PolicyCache(StateFile(str(state)))))
    assert isinstance(attempt.outcomes[0], Delivered)
    assert json.loads(state.read_text())["policies"][0]["mode"] == "enforce"
    # "restart": a new cache from the file; the domain now publishes id 2 and its server is broken
    policy_server.routes.clear()
    mx1.tls_context = _server_ctx(None, "untrusted")
    before = len(mx1.commands)
    attempt = sts.deliver(sts.policy("2", PolicyCache(StateFile(str(state)))))
    o = attempt.outcomes[0]
    assert isinstance(o, Deferred) and o.bounce_class == "tls" and attempt.tls_policy == "mta-sts-enforce"
    assert not any(c.startswith("MAIL") for c in mx1.commands[before:])
    assert policy_server.fetches() == 2


def test_mode_none_withdraws_the_cached_policy(sts: Sts, policy_server: HttpsServer) -> None:
    cache = PolicyCache()
    policy_server.policy(sts_policy("enforce", "mx1.a.test"))
    mx1 = sts.mx("wrong.a.test")
    o = sts.deliver(sts.policy("1", cache)).outcomes[0]
    assert isinstance(o, Deferred) and o.bounce_class == "tls"
    policy_server.policy(sts_policy("none", max_age=86400))
    attempt = sts.deliver(sts.policy("2", cache))
    assert isinstance(attempt.outcomes[0], Delivered) and attempt.tls_policy == "opportunistic"
    assert cache.get("a.test") is None
    assert mx1.messages[0].data.endswith(BODY)


def test_routes_and_disabled_mta_sts_ignore_policies(sts: Sts, policy_server: HttpsServer) -> None:
    policy_server.policy(sts_policy("enforce", "mx1.a.test"))
    mx1 = sts.mx("wrong.a.test")
    attempt = sts.deliver(sts.policy(mta_sts=False))
    assert isinstance(attempt.outcomes[0], Delivered) and attempt.tls_policy == "opportunistic"
    assert policy_server.fetches() == 0 and len(mx1.messages) == 1
