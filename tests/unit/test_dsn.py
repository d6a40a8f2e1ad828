# SPDX-License-Identifier: MIT
"""RFC 3464 DSNs built by fastmta.delivery.dsn, parsed back with the stdlib email package."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

import pytest

from fastmta.delivery import dsn
from fastmta.errors import Reply

ORIGINAL = (
    b"From: Alice <alice@src.test>\r\nTo: bob@dst.test\r\nSubject: hello\r\n"
    b"X-Eight: caf\xc3\xa9\r\n\r\nbody line\r\n..dot\r\n"
)
NOW = 1_800_000_000.0


def build(reports: list[dsn.RcptReport], **kw: object) -> tuple[bytes, EmailMessage]:
    args: dict[str, object] = dict(
        msg_id="0000000001abcdef",
        sender="alice@src.test",
        arrived=NOW - 3600,
        hostname="mx.fastmta.test",
        bounce_from="MAILER-DAEMON@mx.fastmta.test",
        original=ORIGINAL,
        now=NOW,
    )
    args.update(kw)
    raw = dsn.build(reports, **args)  # type: ignore[arg-type]
    return raw, email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


FAILED = [
    dsn.RcptReport(
        "bob@dst.test",
        "failed",
        "5.1.1",
        Reply(550, "5.1.1", "No such user"),
        orcpt="rfc822;Bob+ad@dst.test",
        remote_mta="mx1.dst.test",
        last_attempt=NOW,
    ),
    dsn.RcptReport(
        "carol@other.test",
        "failed",
        "5.2.2",
        Reply(552, "5.2.2", "Mailbox full"),
        remote_mta="mx.other.test",
        last_attempt=NOW,
    ),
]


def test_structure_and_headers() -> None:
    raw, msg = build(FAILED)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in msg.iter_parts()] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    assert msg["From"].addresses[0].addr_spec == "MAILER-DAEMON@mx.fastmta.test"
    assert msg["To"].addresses[0].addr_spec == "alice@src.test"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Message-ID"].endswith("@mx.fastmta.test>")
    assert raw.count(b"\n") == raw.count(b"\r\n")  # CRLF everywhere


def test_delivery_status_fields() -> None:
    _, msg = build(FAILED, envid="ENV+42")
    head, bob, carol = list(msg.iter_parts())[1].get_payload()
    assert head["Reporting-MTA"] == "dns; mx.fastmta.test"
    assert head["Original-Envelope-Id"] == "ENV+42"
    assert "2027" in head["Arrival-Date"] and head["Arrival-Date"].endswith("+0000")
    assert bob["Final-Recipient"] == "rfc822; bob@dst.test"
    assert bob["Original-Recipient"] == "rfc822; Bob+ad@dst.test"  # plus-addressing survives
    assert bob["Action"] == "failed" and bob["Status"] == "5.1.1"
    assert bob["Diagnostic-Code"] == "smtp; 550 5.1.1 No such user"
    assert bob["Remote-MTA"] == "dns; mx1.dst.test"
    assert bob["Last-Attempt-Date"]
    assert carol["Status"] == "5.2.2" and "Original-Recipient" not in carol


def test_human_part_names_every_recipient() -> None:
    _, msg = build(FAILED)
    text = list(msg.iter_parts())[0].get_content()
    assert "<bob@dst.test>: 550 5.1.1 No such user" in text and "carol@other.test" in text


def test_headers_only_by_default_and_8bit_kept() -> None:
    raw, msg = build(FAILED)
    part = list(msg.iter_parts())[2]
    assert b"X-Eight: caf\xc3\xa9\r\n" in raw
    assert b"body line" not in raw
    assert "Subject: hello" in part.get_content()


def test_ret_full_returns_the_message() -> None:
    raw, msg = build(FAILED, ret="FULL")
    part = list(msg.iter_parts())[2]
    assert part.get_content_type() == "message/rfc822"
    assert ORIGINAL in raw  # verbatim, dots and 8-bit bytes included
    assert part.get_payload(0)["Subject"] == "hello"


def test_ret_full_over_the_bound_falls_back_to_headers() -> None:
    raw, msg = build(FAILED, ret="FULL", max_full=10)
    assert list(msg.iter_parts())[2].get_content_type() == "text/rfc822-headers"


def test_missing_original_leaves_two_parts() -> None:
    _, msg = build(FAILED, original=None)
    assert len(list(msg.iter_parts())) == 2


def test_expired_and_delayed() -> None:
    rep = dsn.RcptReport(
        "bob@dst.test",
        "delayed",
        "4.4.1",
        Reply(421, "4.4.1", "connection refused"),
        last_attempt=NOW,
        will_retry_until=NOW + 86400,
    )
    _, msg = build([rep], ret="FULL")
    assert "Delayed" in msg["Subject"]
    block = list(msg.iter_parts())[1].get_payload()[1]
    assert block["Action"] == "delayed" and block["Will-Retry-Until"]
    assert list(msg.iter_parts())[2].get_content_type() == "text/rfc822-headers"  # never FULL for delays


def test_long_diagnostic_is_not_encoded() -> None:
    text = "rejected " + "x" * 300
    _, msg = build([dsn.RcptReport("b@d.test", "failed", "5.7.1", Reply(550, "5.7.1", text))])
    block = list(msg.iter_parts())[1].get_payload()[1]
    assert block["Diagnostic-Code"] == f"smtp; 550 5.7.1 {text}"
    assert "=?" not in block["Diagnostic-Code"]


def test_control_characters_from_peer_are_removed() -> None:
    r = Reply(550, "5.1.1", "bad\r\nInjected: header")
    _, msg = build([dsn.RcptReport("b@d.test", "failed", "5.1.1", r)])
    block = list(msg.iter_parts())[1].get_payload()[1]
    assert block["Injected"] is None


@pytest.mark.parametrize(
    ("sender", "notify", "action", "want"),
    [
        ("a@x.test", "", "failed", True),
        ("a@x.test", "", "delayed", False),
        ("a@x.test", "", "delivered", False),
        ("", "", "failed", False),
        ("", "FAILURE", "failed", False),
        ("a@x.test", "NEVER", "failed", False),
        ("a@x.test", "SUCCESS", "failed", False),
        ("a@x.test", "SUCCESS,DELAY", "delayed", True),
        ("a@x.test", "success", "relayed", True),
        ("a@x.test", "FAILURE", "failed", True),
    ],
)
def test_wanted(sender: str, notify: str, action: str, want: bool) -> None:
    assert dsn.wanted(sender, notify, action) is want


@pytest.mark.parametrize(
    ("reply", "status"),
    [
        (Reply(550, "5.1.1", ""), "5.1.1"),
        (Reply(550, "", ""), "5.0.0"),
        (Reply(451, "5.1.1", ""), "4.0.0"),
        (Reply(250, "2.0.0", ""), "2.0.0"),
    ],
)
def test_status_of(reply: Reply, status: str) -> None:
    assert dsn.status_of(reply) == status


@pytest.mark.parametrize(
    ("nexthop", "host"),
    [
        ("mx1.a.test[127.0.0.2]:2525", "mx1.a.test"),
        ("[127.0.0.1]:2626", "127.0.0.1"),
        ("local", "local"),
        ("lmtp:[127.0.0.1]:24", "127.0.0.1"),
        ("lmtp:unix:/run/dovecot/lmtp", ""),
        ("maildir", ""),
    ],
)
def test_remote_host(nexthop: str, host: str) -> None:
    assert dsn.remote_host(nexthop) == host


def test_utf8_addresses_use_rfc6532_headers() -> None:
    rep = dsn.RcptReport("bö@dst.test", "failed", "5.1.1", Reply(550, "5.1.1", "no such user"))
    assert dsn.needs_utf8("älice@src.test", [rep]) and not dsn.needs_utf8("a@src.test", FAILED)
    raw, msg = build([rep], sender="älice@src.test")
    assert "To: <älice@src.test>".encode() in raw and b"=?utf-8?" not in raw.split(b"\r\n\r\n", 1)[0]
    block = list(msg.iter_parts())[1].get_payload()[1]
    assert block["Final-Recipient"] == "utf-8; bö@dst.test"
