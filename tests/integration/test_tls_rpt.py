# SPDX-License-Identifier: MIT
"""TLS-RPT (RFC 8460) end to end: sessions under an MTA-STS policy are counted, the day ends
(the clock is a parameter), and the report goes to the domain's ``rua``: as mail through our
own spool and scheduler to the reporting domain's MX (a real sink), and as an HTTPS POST to a
real collector. Both reports are checked against the RFC 8460 schema.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email
import gzip
import json
from email import policy as email_policy
from pathlib import Path
from typing import Any

import pytest

from fastmta.config import SpoolConfig
from fastmta.delivery import Destination
from fastmta.delivery.dns import Resolver
from fastmta.delivery.smtp import SmtpDeliverer
from fastmta.delivery.tlspolicy import TlsPolicy
from fastmta.delivery.tlsrpt import DAY, TlsReports, queue_into
from fastmta.delivery.tlsstate import StateFile
from fastmta.deliverylog import DeliveryLog
from fastmta.errors import Deferred, Delivered
from fastmta.scheduler import start_delivery
from fastmta.spool import Spool, new_id
from tests.fixtures.https import HttpsServer, sts_policy
from tests.fixtures.sink import server_context
from tests.integration.test_delivery_client import Bodies, envelope, make_cfg, run
from tests.unit.test_tlsrpt import check_report

pytestmark = pytest.mark.timeout(120)
A = Destination("a.test", "a.test")
RUA = "mailto:tlsrpt@reports.test,https://collector.reports.test/v1/tlsrpt"


def test_daily_report_by_mail_and_https(
    dnsmasq: Any, sinks: Any, sink_port: int, tls_ca: Any, tls_ca_file: str, https_server: Any, tmp_path: Path
) -> None:
    dns = dnsmasq(
        mx=[("a.test", "mx1.a.test", 10), ("reports.test", "mx.reports.test", 10)],
        hosts={"mx1.a.test": "127.0.0.2", "mx.reports.test": "127.0.0.3", "mta-sts.a.test": "127.0.0.11",
               "collector.reports.test": "127.0.0.12"},
        txt={"_mta-sts.a.test": "v=STSv1; id=1;", "_smtp._tls.a.test": f"v=TLSRPTv1; rua={RUA}"},
    )  # fmt: skip
    policy_srv: HttpsServer = https_server("127.0.0.11", ["mta-sts.a.test"])
    policy_srv.policy(sts_policy("enforce", "mx1.a.test"))
    collector: HttpsServer = https_server("127.0.0.12", ["collector.reports.test"])
    collector.routes["/v1/tlsrpt"] = (201, "text/plain", b"thanks", {})
    mx1 = sinks("127.0.0.2", sink_port, starttls=True, tls_names=("mx1.a.test",))
    reports_mx = sinks("127.0.0.3", sink_port)
    cfg = make_cfg(dns.address, sink_port, tls="opportunistic", tls_ca_file=tls_ca_file, tls_rpt=True,
                   retry_schedule=["1s"])  # fmt: skip
    cfg = dataclasses.replace(cfg, spool=SpoolConfig(path=str(tmp_path / "spool"), map_size=64 * 1024**2))
    now = [DAY * 20000 + 3600.0]
    state = StateFile(str(tmp_path / "tls-rpt.json"))
    bodies = Bodies()

    async def scenario() -> None:
        spool = Spool.open(cfg.spool)
        await spool.start()
        resolver = Resolver(cfg.dns)
        tls = TlsPolicy(cfg, resolver)
        reports = TlsReports(resolver, cfg.hostname, cfg.delivery.bounce_from, queue_into(spool.put, new_id),
                             tls, state, clock=lambda: now[0])  # fmt: skip
        tls.reports = reports
        direct = SmtpDeliverer(cfg, bodies, resolver, tls=tls)
        for i in range(2):  # two sessions (a report counts sessions, not messages)
            attempt = await direct.deliver(A, envelope(bodies, ["b@a.test"], msg_id=f"ok{i}"), [0])
            assert isinstance(attempt.outcomes[0], Delivered), attempt.outcomes
            await direct.close()
        mx1.tls_context = server_context(tls_ca, "wrong.a.test")
        attempt = await direct.deliver(A, envelope(bodies, ["b@a.test"], msg_id="bad"), [0])
        assert isinstance(attempt.outcomes[0], Deferred)
        await direct.close()
        assert await reports.send_due() == 0  # the day is not over
        now[0] += DAY
        svc = await start_delivery(cfg, spool, SmtpDeliverer(cfg, spool, resolver, tls=tls), None,
                                   DeliveryLog(enabled=False), interval=0.1)  # fmt: skip
        spool.on_commit(svc.submit)
        assert await reports.send_due() == 2  # one mail, one POST
        assert reports.periods == {}
        await _wait(lambda: bool(reports_mx.messages))
        await svc.stop()
        await reports.close()
        await spool.aclose()

    run(scenario)
    mail = reports_mx.messages[0]
    assert mail.mail_from == "<>" and mail.rcpt_tos == ["tlsrpt@reports.test"]
    msg = email.message_from_bytes(mail.data, policy=email_policy.default)
    assert msg.get_param("report-type") == "tlsrpt" and msg["TLS-Report-Domain"] == "a.test"
    assert msg["TLS-Report-Submitter"] == "out.fastmta.test"
    _, attachment = msg.iter_parts()
    name = attachment.get_filename()
    assert name.startswith("out.fastmta.test!a.test!1728000000!1728086400!") and name.endswith(".json.gz")
    by_mail = json.loads(gzip.decompress(attachment.get_content()))
    (post,) = [r for r in collector.requests if r.method == "POST"]
    assert post.content_type == "application/tlsrpt+gzip" and post.host == "collector.reports.test"
    by_post = json.loads(gzip.decompress(post.body))
    for report in (by_mail, by_post):
        check_report(report)
        (pol,) = report["policies"]
        assert pol["policy"]["policy-type"] == "sts" and pol["policy"]["mx-host"] == ["mx1.a.test"]
        assert pol["summary"] == {"total-successful-session-count": 2, "total-failure-session-count": 1}
        assert pol["failure-details"][0]["result-type"] == "certificate-host-mismatch"
    assert json.loads((tmp_path / "tls-rpt.json").read_text()) == {"periods": {}}


async def _wait(predicate: Any, timeout: float = 30.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")
