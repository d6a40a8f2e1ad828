# SPDX-License-Identifier: MIT
"""Bounce classes from real-world replies."""

from __future__ import annotations

import pytest

from fastmta.delivery.classify import CLASSES, classify
from fastmta.errors import Reply

CASES = [
    (550, "5.1.1", "The email account that you tried to reach does not exist", "invalid_recipient"),
    (550, "5.0.0", "<x@a.test>: Recipient address rejected: User unknown in local recipient table",
     "invalid_recipient"),
    (553, "5.1.3", "Bad recipient address syntax", "invalid_recipient"),
    (550, "5.2.1", "The email account that you tried to reach is disabled", "invalid_recipient"),
    (550, "5.1.2", "Host or domain name not found", "bad_domain"),
    (556, "5.1.10", "Recipient domain does not accept mail (null MX)", "bad_domain"),
    (452, "4.2.2", "The email account that you tried to reach is over quota", "mailbox_full"),
    (552, "5.0.0", "Mailbox full", "mailbox_full"),
    (550, "5.7.1", "Service unavailable; Client host blocked using Spamhaus", "policy"),
    (554, "5.7.26", "Unauthenticated email is not accepted (DMARC)", "policy"),
    (421, "4.7.0", "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume",
     "rate_limited"),
    (450, "4.7.28", "Our system has detected an unusual rate of unsolicited mail", "rate_limited"),
    (451, "4.7.1", "Rate limit exceeded, try again later", "rate_limited"),
    (530, "5.7.10", "Must issue a STARTTLS command first", "tls"),
    (451, "4.7.5", "TLS handshake with mx failed", "tls"),
    (451, "4.4.3", "Temporary DNS failure", "dns"),
    (451, "4.4.2", "Timed out waiting for reply", "connection"),
    (421, "4.4.1", "Connection refused by every mail exchanger", "connection"),
    (421, "4.0.0", "Service not available, closing transmission channel", "connection"),
    (451, "4.4.7", "Delivery time expired", "timeout"),
    (451, "4.0.0", "Connection timed out", "timeout"),
    (554, "5.4.6", "Too many hops", "loop"),
    (554, "5.4.6", "mail for a.test loops back to myself", "loop"),
    (552, "5.3.4", "Message too big", "other"),
    (451, "4.3.0", "Internal error", "other"),
]  # fmt: skip


@pytest.mark.parametrize(("code", "enhanced", "text", "expected"), CASES)
def test_classify(code: int, enhanced: str, text: str, expected: str) -> None:
    assert classify(Reply(code, enhanced, text)) == expected


def test_every_result_is_a_known_class() -> None:
    for code, enhanced, text, _ in CASES:
        assert classify(Reply(code, enhanced, text)) in CLASSES
    assert classify(Reply(554, "5.9.9", "")) == "other"


def test_cached_results_are_stable() -> None:
    r = Reply(550, "5.1.1", "no such user")
    assert classify(r) == classify(Reply(550, "5.1.1", "no such user")) == "invalid_recipient"
