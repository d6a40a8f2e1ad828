# SPDX-License-Identifier: MIT
"""The suppression list and feedback loops end to end (tests/fixtures/pools.py).

A suppressed recipient fails untried (550 5.7.1, event ``suppressed``, a DSN to the
sender); ``invalid_recipient`` bounces and ARF complaints add entries; the list
lives in LMDB, so it survives a restart and every worker shard sees it.
"""

from __future__ import annotations

import base64
import email
import email.policy
from email.mime.base import MIMEBase
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Any

from tests.fixtures.pools import message, send
from tests.support import ServerProcess, run_fastmta

SENDER = "shop@src.test"
FBL = '[suppression]\nfbl_addresses = ["fbl@fbl.test"]\n'


def suppress(env: Any, *args: str) -> Any:
    return run_fastmta("suppress", *args, "--config", str(env.config))


def tenant_mail(rcpt: str, tenant: str = "shop1") -> bytes:
    return message(SENDER, rcpt, f"X-Fastmta-Tenant: {tenant}\r\n")


def test_a_suppressed_recipient_is_never_attempted(pooled_mta: Any) -> None:
    env = pooled_mta()
    assert suppress(env, "add", "Gone@A.test", "--reason", "asked").returncode == 0
    assert suppress(env, "check", "gone@a.test").returncode == 0  # matched case-insensitively
    assert suppress(env, "check", "here@a.test").returncode == 1
    send(env.port, SENDER, ["GONE@a.test", "here@a.test"], tenant_mail("gone@a.test"))
    recs = env.wait_log(lambda rs: any(r["event"] == "delivered" and r["rcpt"] == SENDER for r in rs))
    [sup] = [r for r in recs if r["event"] == "suppressed"]
    assert (sup["rcpt"], sup["code"], sup["enhanced"]) == ("GONE@a.test", 550, "5.7.1")
    assert sup["bounce_class"] == "suppressed"
    sink = env.sinks["sink"]
    tried = [r for m in sink.messages for r in m.rcpt_tos]
    assert "GONE@a.test" not in tried and "here@a.test" in tried
    [dsn] = [m for m in sink.messages if m.rcpt_tos == [SENDER]]
    assert dsn.mail_from in ("", "<>")
    assert b"Status: 5.7.1" in dsn.data and b"GONE@a.test" in dsn.data


def test_tenant_entries_hold_for_their_tenant_only(pooled_mta: Any) -> None:
    env = pooled_mta()
    assert suppress(env, "add", "x@a.test", "--tenant", "shop1").returncode == 0
    send(env.port, SENDER, ["x@a.test"], tenant_mail("x@a.test", "shop1"))
    send(env.port, SENDER, ["x@a.test"], tenant_mail("x@a.test", "shop2"))
    recs = env.wait_log(
        lambda rs: {r["event"] for r in rs if r["rcpt"] == "x@a.test"} >= {"suppressed", "delivered"}
    )
    recs = [r for r in recs if r["rcpt"] == "x@a.test"]
    assert [r["tenant"] for r in recs if r["event"] == "suppressed"] == ["shop1"]
    assert [r["tenant"] for r in recs if r["event"] == "delivered"] == ["shop2"]
    listed = suppress(env, "list", "--tenant", "shop1", "--json").stdout.decode()
    assert '"address": "x@a.test"' in listed and '"tenant": "shop1"' in listed
    assert suppress(env, "remove", "x@a.test", "--tenant", "shop1").returncode == 0
    assert suppress(env, "check", "x@a.test", "--tenant", "shop1").returncode == 1


def test_invalid_recipient_bounces_suppress_across_a_restart(pooled_mta: Any) -> None:
    env = pooled_mta(rcpt={"nouser@a.test": "550 5.1.1 No such user"})
    send(env.port, SENDER, ["nouser@a.test"], tenant_mail("nouser@a.test"))
    env.wait_log(
        lambda rs: any(r["event"] == "bounced" and r["bounce_class"] == "invalid_recipient" for r in rs)
    )
    env.wait_log(lambda rs: suppress(env, "check", "nouser@a.test", "--tenant", "shop1").returncode == 0)
    assert suppress(env, "check", "nouser@a.test").returncode == 1  # for that tenant, not globally
    env.server.stop()
    env.server = ServerProcess(env.config, ("127.0.0.1", env.port))
    attempts = len([c for c in env.sinks["sink"].commands if "nouser" in c])
    send(env.port, SENDER, ["nouser@a.test"], tenant_mail("nouser@a.test"))
    env.wait_log(lambda rs: any(r["event"] == "suppressed" for r in rs))
    assert len([c for c in env.sinks["sink"].commands if "nouser" in c]) == attempts


def test_every_worker_shard_sees_the_list(pooled_mta: Any) -> None:
    env = pooled_mta(workers=2)
    assert suppress(env, "add", "gone@a.test").returncode == 0
    for _ in range(8):  # separate connections: the kernel spreads them over both workers
        send(env.port, SENDER, ["gone@a.test"], message(SENDER, "gone@a.test"))
    env.wait_log(lambda rs: len([r for r in rs if r["event"] == "suppressed"]) == 8)
    assert not [m for m in env.sinks["sink"].messages if "gone@a.test" in m.rcpt_tos]


def arf_report(original: bytes, rcpt: str) -> bytes:
    """An abuse report as RFC 5965 appendix B.1 shows it, quoting the message as received."""
    report = MIMEMultipart("report", report_type="feedback-report")
    report["From"] = "<abuse@mailbox-provider.test>"
    report["To"] = "<fbl@fbl.test>"
    report["Subject"] = "FW: hi"
    report.attach(
        MIMEText("This is an email abuse report for an email message received from IP 127.0.0.4\r\n")
    )
    fields = MIMEBase("message", "feedback-report")
    fields.set_payload(
        "Feedback-Type: abuse\r\nUser-Agent: SomeGenerator/1.0\r\nVersion: 1\r\n"
        f"Original-Mail-From: <{SENDER}>\r\nOriginal-Rcpt-To: <{rcpt}>\r\nSource-IP: 127.0.0.4\r\n"
    )
    report.attach(fields)
    report.attach(MIMEMessage(email.message_from_bytes(original, policy=email.policy.compat32)))
    return report.as_bytes(policy=email.policy.compat32.clone(linesep="\r\n"))


def test_a_complaint_suppresses_the_recipient_for_its_tenant(pooled_mta: Any) -> None:
    env = pooled_mta(extra=FBL)
    send(env.port, SENDER, ["victim@a.test"], tenant_mail("victim@a.test"))
    [original] = env.sinks["sink"].wait_messages(1)
    assert original.ref
    # the mailbox provider's report comes from outside (a client that may not relay)
    send(env.port, "abuse@mailbox-provider.test", ["fbl@fbl.test"], arf_report(original.data, "other@a.test"),
         source="127.0.0.9")  # fmt: skip
    recs = env.wait_log(lambda rs: any(r["event"] == "complaint" for r in rs))
    [c] = [r for r in recs if r["event"] == "complaint"]
    assert (c["rcpt"], c["tenant"], c["feedback_type"]) == ("victim@a.test", "shop1", "abuse")
    assert suppress(env, "check", "victim@a.test", "--tenant", "shop1").returncode == 0
    env.wait_log(lambda rs: any(r["event"] == "delivered" and r["rcpt"] == "fbl@fbl.test" for r in rs))
    assert len(env.sinks["sink"].messages) == 1  # the report itself went nowhere
    send(env.port, SENDER, ["victim@a.test"], tenant_mail("victim@a.test"))
    env.wait_log(lambda rs: any(r["event"] == "suppressed" for r in rs))


def test_a_report_with_a_forged_token_is_dropped(pooled_mta: Any) -> None:
    env = pooled_mta(extra=FBL)
    send(env.port, SENDER, ["victim@a.test"], tenant_mail("victim@a.test"))
    [original] = env.sinks["sink"].wait_messages(1)
    tag = original.ref.split(".")[1]  # a real tag on a payload naming someone else
    forged_payload = b"X" * 20 + b"\nceo@a.test\nshop1"
    forged = base64.urlsafe_b64encode(forged_payload).rstrip(b"=").decode() + "." + tag
    quoted = original.data.replace(original.ref.encode(), forged.encode())
    send(env.port, "abuse@mailbox-provider.test", ["fbl@fbl.test"], arf_report(quoted, "ceo@a.test"),
         source="127.0.0.9")  # fmt: skip
    env.wait_log(lambda rs: any(r["event"] == "delivered" and r["rcpt"] == "fbl@fbl.test" for r in rs))
    assert not [r for r in env.log() if r["event"] == "complaint"]
    assert "does not verify" in env.server.stderr()
    assert suppress(env, "check", "ceo@a.test", "--tenant", "shop1").returncode == 1
