# SPDX-License-Identifier: MIT
"""REQUIRETLS (RFC 8689) on the way out, and the "TLS-Required: No" header, against real sinks.

A REQUIRETLS message leaves only over verified TLS to a hop that offers REQUIRETLS
(and the parameter goes along); anything else bounces with 5.7.10 and the message
never reaches the hop. ``TLS-Required: No`` lets delivery go on when the recipient
domain's policy would stop it, unless the message also asked for REQUIRETLS.
"""

from __future__ import annotations

from typing import Any

import pytest

from fastmta.delivery import Destination
from fastmta.errors import Bounced, Deferred, Delivered
from tests.fixtures.https import HttpsServer, sts_policy
from tests.integration.test_delivery_client import BODY, Bodies, deliver_once, envelope, make_cfg, run

pytestmark = pytest.mark.timeout(90)
A = Destination("a.test", "a.test")
OPTIONAL = b"TLS-Required: No\r\n" + BODY


@pytest.fixture
def zone(dnsmasq: Any) -> Any:
    return dnsmasq(
        mx=[("a.test", "mx1.a.test", 10)],
        hosts={"mx1.a.test": "127.0.0.2", "mta-sts.a.test": "127.0.0.11"},
        txt={"_mta-sts.a.test": "v=STSv1; id=1;"},
    )


def bounced_5710(o: Any) -> bool:
    return isinstance(o, Bounced) and o.reply.enhanced == "5.7.10" and o.bounce_class == "tls"


def no_transaction(sink: Any) -> bool:
    return sink.messages == [] and not any(c.startswith(("MAIL", "RCPT")) for c in sink.commands)


def test_requiretls_goes_out_over_verified_tls_with_the_parameter(zone: Any, sinks: Any, sink_port: int,
                                                                  tls_ca_file: str) -> None:  # fmt: skip
    mx1 = sinks("127.0.0.2", sink_port, starttls=True, requiretls=True, tls_names=("mx1.a.test",))
    bodies = Bodies()
    env = envelope(bodies, ["b@a.test"], REQUIRETLS="")
    cfg = make_cfg(zone.address, sink_port, tls="required", tls_ca_file=tls_ca_file, mta_sts=False)
    attempt = run(lambda: deliver_once(cfg, bodies, A, env))
    assert isinstance(attempt.outcomes[0], Delivered), attempt.outcomes
    assert "REQUIRETLS" in mx1.messages[0].mail_options and mx1.messages[0].tls


def test_requiretls_without_a_verified_policy_bounces_untried(zone: Any, sinks: Any, sink_port: int) -> None:
    mx1 = sinks("127.0.0.2", sink_port, starttls=True, requiretls=True)
    bodies = Bodies()
    env = envelope(bodies, ["b@a.test"], REQUIRETLS="")
    cfg = make_cfg(zone.address, sink_port, tls="opportunistic", mta_sts=False)
    attempt = run(lambda: deliver_once(cfg, bodies, A, env))
    assert bounced_5710(attempt.outcomes[0]) and mx1.connections == 0


def test_requiretls_to_a_hop_without_it_bounces(zone: Any, sinks: Any, sink_port: int,
                                                tls_ca_file: str) -> None:  # fmt: skip
    mx1 = sinks("127.0.0.2", sink_port, starttls=True, tls_names=("mx1.a.test",))
    bodies = Bodies()
    env = envelope(bodies, ["b@a.test"], REQUIRETLS="")
    cfg = make_cfg(zone.address, sink_port, tls="required", tls_ca_file=tls_ca_file, mta_sts=False)
    attempt = run(lambda: deliver_once(cfg, bodies, A, env))
    assert bounced_5710(attempt.outcomes[0]) and no_transaction(mx1)


def test_tls_required_no_overrides_a_failing_policy(zone: Any, sinks: Any, sink_port: int, tls_ca_file: str,
                                                    https_server: Any) -> None:  # fmt: skip
    srv: HttpsServer = https_server("127.0.0.11", ["mta-sts.a.test"])
    srv.policy(sts_policy("enforce", "mx1.a.test"))
    mx1 = sinks("127.0.0.2", sink_port, starttls=True, tls_names=("wrong.a.test",))
    cfg = make_cfg(zone.address, sink_port, tls="opportunistic", tls_ca_file=tls_ca_file)
    bodies = Bodies()
    strict = envelope(bodies, ["b@a.test"], msg_id="strict")
    o = run(lambda: deliver_once(cfg, bodies, A, strict)).outcomes[0]
    assert isinstance(o, Deferred) and o.bounce_class == "tls"
    relaxed = envelope(bodies, ["b@a.test"], body=OPTIONAL, msg_id="relaxed")
    attempt = run(lambda: deliver_once(cfg, bodies, A, relaxed))
    assert isinstance(attempt.outcomes[0], Delivered) and attempt.tls_policy == "opportunistic"
    assert b"TLS-Required: No" in mx1.messages[0].data.partition(b"\r\n\r\n")[0].split(b"\r\n")  # passed on
    # with REQUIRETLS the header is ignored (RFC 8689 §5)
    both = envelope(bodies, ["b@a.test"], body=OPTIONAL, msg_id="both", REQUIRETLS="")
    o = run(lambda: deliver_once(cfg, bodies, A, both)).outcomes[0]
    assert isinstance(o, Deferred) and o.bounce_class == "tls" and len(mx1.messages) == 1
