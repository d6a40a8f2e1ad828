# SPDX-License-Identifier: MIT
"""Bounce classes from real-world replies: the synthetic table, then wording published by
Postfix, Exim, Gmail, Microsoft (Outlook.com, Office 365) and Yahoo, and the rule that a 4xx
never gets a permanent class."""

from __future__ import annotations

import re
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastmta.delivery.classify import CLASSES, classify, failure_outcome
from fastmta.errors import Bounced, Deferred, Reply


def replies(table: str) -> list[tuple[int, str, str, str]]:
    """``(code, enhanced, text, class)`` rows from a table of ``class  code [enhanced] text`` lines.

    Lines that start with spaces continue the text of the line above; ``#`` lines are comments.
    """
    rows: list[str] = []
    for line in textwrap.dedent(table).strip("\n").split("\n"):
        if line.startswith(" "):
            rows[-1] += " " + line.strip(" ")
        elif not line.startswith("#"):
            rows.append(line)
    out = []
    for row in rows:
        cls, reply = row.split(None, 1)
        m = re.fullmatch(r"(\d{3}) (?:(\d\.\d{1,3}\.\d{1,3}) )?(.*)", reply)
        assert m, row
        out.append((int(m[1]), m[2] or "", m[3], cls))
    return out


CASES = replies("""
    invalid_recipient 550 5.1.1 The email account that you tried to reach does not exist
    invalid_recipient 550 5.0.0 <x@a.test>: Recipient address rejected: User unknown in local recipient
                      table
    invalid_recipient 553 5.1.3 Bad recipient address syntax
    invalid_recipient 550 5.2.1 The email account that you tried to reach is disabled
    bad_domain        550 5.1.2 Host or domain name not found
    bad_domain        556 5.1.10 Recipient domain does not accept mail (null MX)
    mailbox_full      452 4.2.2 The email account that you tried to reach is over quota
    mailbox_full      552 5.0.0 Mailbox full
    policy            550 5.7.1 Service unavailable; Client host blocked using Spamhaus
    policy            554 5.7.26 Unauthenticated email is not accepted (DMARC)
    rate_limited      421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected
                      volume
    rate_limited      450 4.7.28 Our system has detected an unusual rate of unsolicited mail
    rate_limited      451 4.7.1 Rate limit exceeded, try again later
    tls               530 5.7.10 Must issue a STARTTLS command first
    tls               451 4.7.5 TLS handshake with mx failed
    dns               451 4.4.3 Temporary DNS failure
    connection        451 4.4.2 Timed out waiting for reply
    connection        421 4.4.1 Connection refused by every mail exchanger
    connection        421 4.0.0 Service not available, closing transmission channel
    timeout           451 4.4.7 Delivery time expired
    timeout           451 4.0.0 Connection timed out
    loop              554 5.4.6 Too many hops
    loop              554 5.4.6 mail for a.test loops back to myself
    other             552 5.3.4 Message too big
    other             451 4.3.0 Internal error
""")

# Replies as the receivers send them (ids and addresses replaced). Sources: Gmail's and
# Yahoo's postmaster pages, Microsoft's NDR reference, Postfix and postgrey logs, Exim.
REAL = replies("""
    # Gmail
    invalid_recipient 550 5.1.1 The email account that you tried to reach does not exist. Please try
                      double-checking the recipient's email address for typos or unnecessary spaces.
                      https://support.google.com/mail/?p=NoSuchUser a1si2 - gsmtp
    invalid_recipient 550 5.2.1 The email account that you tried to reach is disabled. - gsmtp
    mailbox_full      552 5.2.2 The email account that you tried to reach is over quota and inactive. -
                      gsmtp
    mailbox_full      452 4.2.2 The email account that you tried to reach is over quota. Please direct
                      the recipient to https://support.google.com/mail/?p=OverQuotaTemp - gsmtp
    rate_limited      421 4.7.28 Gmail has detected an unusual rate of unsolicited mail originating from
                      your IP address. To protect our users from spam, mail sent from your IP address
                      has been temporarily rate limited.
    policy            550 5.7.26 This mail has been blocked because the sender is unauthenticated. Gmail
                      requires all senders to authenticate with either SPF or DKIM.
    policy            550 5.7.1 Our system has detected that this message is likely unsolicited mail. To
                      reduce the amount of spam sent to Gmail, this message has been blocked.
    policy            421 4.7.0 Try again later, closing connection. (EHLO) - gsmtp
    other             452 4.5.3 Your message has too many recipients. - gsmtp
    connection        421 4.3.0 Temporary System Problem.  Try again later (10). - gsmtp
    # Microsoft
    invalid_recipient 550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302).
                      [AM4PEPF00025F97.EURPRD83.prod.outlook.com]
    invalid_recipient 550 5.4.1 Recipient address rejected: Access denied. AS(201806281)
                      [DM6NAM12FT015.eop-nam12.prod.protection.outlook.com]
    invalid_recipient 550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address
                      lookup
    policy            550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact
                      your Internet service provider since part of their network is on our block list
                      (S3150).
    policy            550 5.7.606 Access denied, banned sending IP [192.0.2.1]. To request removal from
                      this list please visit https://sender.office.com/ and follow the directions.
    rate_limited      451 4.7.500 Server busy. Please try again later from [192.0.2.1]. (S77714)
    rate_limited      421 4.3.2 The maximum number of concurrent server connections has exceeded a
                      limit, closing transmission channel
    mailbox_full      452 4.2.2 The recipient's mailbox is full and can't accept messages now.
    # Yahoo
    policy            554 5.7.9 Message not accepted for policy reasons.  See
                      https://postmaster.yahooinc.com/error-codes
    rate_limited      421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected
                      volume or user complaints - 4.16.55.1; see
                      https://postmaster.yahooinc.com/error-codes
    policy            554 5.7.1 [BL21] Connections will not be accepted from 192.0.2.1, because the ip
                      is in Spamhaus's list; see https://postmaster.yahooinc.com/error-codes
    invalid_recipient 552 1 Requested mail action aborted, mailbox not found
    invalid_recipient 554 delivery error: dd This user doesn't have a yahoo.com account (x@yahoo.com)
                      [0] - mta1.mail.yahoo.com
    rate_limited      451 Message temporarily deferred - [160]
    # Postfix (and postgrey / policy services behind it)
    policy            450 4.2.0 <x@a.test>: Recipient address rejected: Greylisted, see
                      http://postgrey.schweikert.ch/help/a.test.html
    other             450 4.1.1 <x@a.test>: Recipient address rejected: unverified address: Address
                      verification in progress
    dns               450 4.1.2 <x@nx.test>: Recipient address rejected: Domain not found
    invalid_recipient 550 5.1.1 <x@a.test>: Recipient address rejected: User unknown in virtual mailbox
                      table
    invalid_recipient 550 5.1.1 <x@a.test>: Recipient address rejected: User unknown in local recipient
                      table
    other             450 4.1.1 <x@a.test>: Recipient address rejected: User unknown in local recipient
                      table
    policy            554 5.7.1 <x@a.test>: Relay access denied
    policy            450 4.7.1 Client host rejected: cannot find your hostname, [192.0.2.1]
    policy            554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using
                      zen.spamhaus.org
    policy            553 5.1.8 <x@nx.test>: Sender address rejected: Domain not found
    other             452 4.3.1 Insufficient system storage
    # Exim
    bad_domain        550 Unrouteable address
    invalid_recipient 550 No Such User Here
    policy            550 Verification failed for <x@a.test> Unrouteable address Sender verify failed
    policy            550 Administrative prohibition
    other             451 Temporary local problem - please try later
""")


PERMANENT = {"invalid_recipient", "bad_domain"}


@given(
    code=st.sampled_from([421, 450, 451, 452, 454, 550]).filter(lambda c: c < 500),
    enhanced=st.sampled_from(["", "4.1.1", "4.1.2", "4.1.10", "5.1.1", "4.2.1", "4.0.0", "4.4.4"]),
    text=st.sampled_from([t for _, _, t, _ in REAL + CASES]) | st.text(max_size=80),
)
def test_a_temporary_reply_never_gets_a_permanent_class(code: int, enhanced: str, text: str) -> None:
    """4xx means "try again": no bounce class that says the address or domain is gone, so
    nothing downstream (suppression, reports) treats a greylisted address as invalid."""
    reply = Reply(code, enhanced, text)
    assert classify(reply) not in PERMANENT
    assert isinstance(failure_outcome(reply), Deferred)


@pytest.mark.parametrize(("code", "enhanced", "text", "expected"), REAL)
def test_the_code_decides_temporary_or_permanent(code: int, enhanced: str, text: str, expected: str) -> None:
    outcome = failure_outcome(Reply(code, enhanced, text))
    assert isinstance(outcome, Bounced if code >= 500 else Deferred)
    assert outcome.bounce_class == expected


@pytest.mark.parametrize(("code", "enhanced", "text", "expected"), CASES + REAL)
def test_classify(code: int, enhanced: str, text: str, expected: str) -> None:
    assert classify(Reply(code, enhanced, text)) == expected


def test_every_result_is_a_known_class() -> None:
    for code, enhanced, text, _ in CASES:
        assert classify(Reply(code, enhanced, text)) in CLASSES
    assert classify(Reply(554, "5.9.9", "")) == "other"


def test_cached_results_are_stable() -> None:
    r = Reply(550, "5.1.1", "no such user")
    assert classify(r) == classify(Reply(550, "5.1.1", "no such user")) == "invalid_recipient"
