# SPDX-License-Identifier: MIT
"""TLS-RPT's pure parts: the rua record, the report JSON (RFC 8460 §4.4 schema), the mail."""

from __future__ import annotations

import base64
import email
import gzip
import json
from email import policy as email_policy
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from fastmta.delivery.tlsrpt import TlsReports, build_message, build_report, filename, parse_rua
from fastmta.delivery.tlsstate import StateFile

RESULT_TYPES = [
    "starttls-not-supported", "certificate-host-mismatch", "certificate-expired", "certificate-not-trusted",
    "validation-failure", "tlsa-invalid", "dnssec-invalid", "dane-required", "sts-policy-fetch-error",
    "sts-policy-invalid", "sts-webpki-invalid",
]  # fmt: skip
# RFC 8460 §4.4 (report fields) and §4.3 (result types) as a JSON Schema.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["organization-name", "date-range", "contact-info", "report-id", "policies"],
    "properties": {
        "organization-name": {"type": "string", "minLength": 1},
        "date-range": {
            "type": "object",
            "required": ["start-datetime", "end-datetime"],
            "properties": {
                "start-datetime": {"type": "string", "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"},
                "end-datetime": {"type": "string", "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"},
            },
        },
        "contact-info": {"type": "string"},
        "report-id": {"type": "string", "minLength": 1},
        "policies": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["policy", "summary"],
                "properties": {
                    "policy": {
                        "type": "object",
                        "required": ["policy-type", "policy-domain"],
                        "properties": {
                            "policy-type": {"enum": ["tlsa", "sts", "no-policy-found"]},
                            "policy-string": {"type": "array", "items": {"type": "string"}},
                            "policy-domain": {"type": "string"},
                            "mx-host": {"type": "array", "items": {"type": "string"}},
                        },
                        "additionalProperties": False,
                    },
                    "summary": {
                        "type": "object",
                        "required": ["total-successful-session-count", "total-failure-session-count"],
                        "properties": {
                            "total-successful-session-count": {"type": "integer", "minimum": 0},
                            "total-failure-session-count": {"type": "integer", "minimum": 0},
                        },
                        "additionalProperties": False,
                    },
                    "failure-details": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["result-type", "failed-session-count"],
                            "properties": {
                                "result-type": {"enum": RESULT_TYPES},
                                "sending-mta-ip": {"type": "string"},
                                "receiving-mx-hostname": {"type": "string"},
                                "receiving-mx-helo": {"type": "string"},
                                "receiving-ip": {"type": "string"},
                                "failed-session-count": {"type": "integer", "minimum": 1},
                                "additional-information": {"type": "string"},
                                "failure-reason-code": {"type": "string"},
                            },
                            "additionalProperties": False,
                        },
                    },
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}


def check_report(report: dict[str, Any]) -> None:
    jsonschema.validate(report, SCHEMA)


@pytest.mark.parametrize(("records", "rua"), [
    (('"v=TLSRPTv1; rua=mailto:r@a.test"',), ["mailto:r@a.test"]),
    (('"v=TLSRPTv1;rua=mailto:r@a.test,https://c.test/x"',), ["mailto:r@a.test", "https://c.test/x"]),
    (('"v=TLSRPTv1; rua=ftp://x,mailto:r@a.test"',), ["mailto:r@a.test"]),
    (('"v=TLSRPTv1; rua=mailto:a@x"', '"v=TLSRPTv1; rua=mailto:b@x"'), []),
    (('"v=spf1 -all"',), []),
])  # fmt: skip
def test_parse_rua(records: tuple[str, ...], rua: list[str]) -> None:
    assert parse_rua(records) == rua


def counters(tmp_path: Path, now: list[float]) -> TlsReports:
    return TlsReports(None, "out.test", "MAILER-DAEMON@out.test", None, None,  # type: ignore[arg-type]
                      StateFile(str(tmp_path / "tls-rpt.json")), clock=lambda: now[0])  # fmt: skip


def test_counters_survive_a_restart_and_make_a_valid_report(tmp_path: Path) -> None:
    now = [86400.0 * 20000 + 5]
    rpt = counters(tmp_path, now)
    sts = ("version: STSv1", "mode: enforce", "mx: mx1.a.test", "max_age: 86400")
    rpt.record("a.test", "sts", sts, ("mx1.a.test",), None, "mx1.a.test", "127.0.0.2")
    rpt.record("a.test", "sts", sts, ("mx1.a.test",), "certificate-expired", "mx1.a.test", "127.0.0.2")
    rpt.record("a.test", "sts", sts, ("mx1.a.test",), "certificate-expired", "mx1.a.test", "127.0.0.2")
    rpt.record("b.test", "tlsa", ("3 1 1 ab",), ("mx.b.test",), "tlsa-invalid", "mx.b.test", "")
    restarted = counters(tmp_path, now)  # StateFile wrote at once (no loop): nothing lost
    assert restarted.periods == rpt.periods
    ((key, domains),) = restarted.periods.items()
    start = int(key) * 86400.0
    report = build_report("a.test", domains["a.test"], start, start + 86400, "out.test",
                          "postmaster@out.test", "r1@out.test")  # fmt: skip
    check_report(report)
    (pol,) = report["policies"]
    assert pol["summary"] == {"total-successful-session-count": 1, "total-failure-session-count": 2}
    assert pol["failure-details"] == [
        {
            "result-type": "certificate-expired",
            "failed-session-count": 2,
            "receiving-mx-hostname": "mx1.a.test",
            "receiving-ip": "127.0.0.2",
        }
    ]
    assert report["date-range"] == {
        "start-datetime": "2024-10-04T00:00:00Z",
        "end-datetime": "2024-10-04T23:59:59Z",
    }
    check_report(build_report("b.test", domains["b.test"], start, start + 86400, "o", "c", "r2"))


def test_report_mail() -> None:
    entries = {"sts": {"strings": [], "mx": [], "ok": 3, "fail": {}}}
    report = build_report("a.test", entries, 0.0, 86400.0, "out.test", "postmaster@out.test", "r1@out.test")
    gz = gzip.compress(json.dumps(report).encode())
    name = filename("out.test", "a.test", 0.0, 86400.0, "u1")
    assert name == "out.test!a.test!0!86400!u1.json.gz"
    raw = build_message(report, gz, name, "a.test", "out.test", "MAILER-DAEMON@out.test", "r@a.test", 86400.0)
    msg = email.message_from_bytes(raw, policy=email_policy.default)
    assert msg.get_content_type() == "multipart/report" and msg.get_param("report-type") == "tlsrpt"
    assert msg["TLS-Report-Domain"] == "a.test" and msg["TLS-Report-Submitter"] == "out.test"
    assert msg["Subject"] == "Report Domain: a.test Submitter: out.test Report-ID: <r1@out.test>"
    text, attachment = msg.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert attachment.get_content_type() == "application/tlsrpt+gzip" and attachment.get_filename() == name
    assert json.loads(gzip.decompress(attachment.get_content())) == report
    assert base64.b64decode(attachment.get_payload()) == gz
