# SPDX-License-Identifier: MIT
"""The TLS policies inside a real ``fastmta serve``: REQUIRETLS received over STARTTLS and
relayed under MTA-STS enforce, the ``tls_policy`` log field, and the policy and TLS-RPT
state files written beside the spool (so a restart keeps them)."""

from __future__ import annotations

import json
import smtplib
import ssl
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.https import HttpsServer, sts_policy
from tests.support import fastmta_server, free_port, wait_until

pytestmark = pytest.mark.timeout(120)


def test_requiretls_relayed_under_mta_sts_with_state_kept(
    make_config: Any, dnsmasq: Any, sinks: Any, sink_port: int, tls_ca: Any, tls_ca_file: str,
    https_server: Any, tmp_path: Path,
) -> None:  # fmt: skip
    dns = dnsmasq(mx=[("a.test", "mx1.a.test", 10)],
                  hosts={"mx1.a.test": "127.0.0.2", "mta-sts.a.test": "127.0.0.11"},
                  txt={"_mta-sts.a.test": "v=STSv1; id=1;"})  # fmt: skip
    srv: HttpsServer = https_server("127.0.0.11", ["mta-sts.a.test"])
    srv.policy(sts_policy("enforce", "mx1.a.test"))
    mx1 = sinks("127.0.0.2", sink_port, starttls=True, requiretls=True, tls_names=("mx1.a.test",))
    cert = tls_ca.issue_cert("mx.fastmta.test", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    port = free_port()
    cfg = make_config(f"""
        [[listener]]
        address = "127.0.0.1:{port}"
        tls = "starttls"

        [tls]
        cert_file = "{tmp_path / "cert.pem"}"
        key_file = "{tmp_path / "key.pem"}"

        [delivery]
        port = {sink_port}
        tls_ca_file = "{tls_ca_file}"
        tls_rpt = true
        connect_timeout = "2s"

        [dns]
        nameservers = ["{dns.address}"]
        timeout = "2s"
    """)
    msg = b"From: a@src.test\r\nTo: b@a.test\r\nSubject: secret\r\n\r\nonly over verified TLS\r\n"
    with fastmta_server(cfg, ("127.0.0.1", port)) as server:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
            c.ehlo("client.test")
            assert "requiretls" not in c.esmtp_features
            c.starttls(context=ssl.create_default_context(cafile=tls_ca_file))
            c.ehlo("client.test")
            assert "requiretls" in c.esmtp_features
            c.sendmail("a@src.test", ["b@a.test"], msg, mail_options=["REQUIRETLS"])
        wait_until(lambda: bool(server.events("delivered")), 30, "the delivery")
        (rec,) = server.events("delivered")
        assert rec["tls_policy"] == "mta-sts-enforce" and rec["tls"] in ("TLSv1.2", "TLSv1.3")
    assert mx1.messages[0].data.endswith(msg) and "REQUIRETLS" in mx1.messages[0].mail_options
    state = tmp_path / "spool" / "tls-policy"
    (policy,) = json.loads((state / "mta-sts.json").read_text())["policies"]
    assert (policy["domain"], policy["mode"], policy["mx"]) == ("a.test", "enforce", ["mx1.a.test"])
    (day,) = json.loads((state / "tls-rpt.json").read_text())["periods"].values()
    assert day["a.test"]["sts"]["ok"] == 1
