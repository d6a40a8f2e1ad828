# SPDX-License-Identifier: MIT
"""fastmta's DKIM signatures, checked by dkimpy and by OpenDKIM (tests/fixtures/dkim.py)."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastmta.config import DKIM_CANONICALIZATIONS as CANONICALIZATIONS
from fastmta.config import DkimConfig
from fastmta.dkim import canon, signer
from tests.fixtures.dkim import DOMAIN, ED, RSA, Keys

T = 1_790_000_000
ATTACHMENT = base64.encodebytes(bytes(range(256)) * 40).replace(b"\n", b"\r\n")

MESSAGES = {
    "plain": b"From: Alice <alice@example.test>\r\nTo: bob@dest.test\r\nSubject: hello\r\n"
    b"Date: Mon, 1 Jan 2029 10:00:00 +0000\r\nMessage-ID: <1@example.test>\r\n\r\nHello Bob.\r\n",
    "mime_attachment": b"From: alice@example.test\r\nTo: bob@dest.test\r\nSubject: files\r\n"
    b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"\r\n\r\n'
    b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee attached.\r\n"
    b'--b1\r\nContent-Type: application/octet-stream; name="x.bin"\r\n'
    b"Content-Transfer-Encoding: base64\r\n\r\n" + ATTACHMENT + b"--b1--\r\n",
    "8bit_body": b"From: alice@example.test\r\nTo: bob@dest.test\r\nSubject: 8bit\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    + "Grüße aus Köln, ½ € \t \r\n  tabs\tand  spaces  \r\n".encode(),
    "smtputf8_headers": "From: Jörg <jörg@bücher.example.test>\r\nTo: zoë@dest.test\r\n"
    "Subject: Grüße\r\n\r\nhallo\r\n".encode(),
    "long_folded_headers": b"From: alice@example.test\r\nTo: "
    + b",\r\n\t".join(b"user%d@dest.test" % i for i in range(60))
    + b"\r\nSubject: "
    + b" ".join([b"word"] * 200)
    + b"\r\n   \t continued\r\n"
    b"References: " + b"\r\n ".join(b"<%d@example.test>" % i for i in range(40)) + b"\r\n\r\nbody\r\n",
    "trailing_blank_lines": b"From: alice@example.test\r\nSubject: tail\r\n\r\n"
    b"last line  \r\n\r\n\r\n \r\n\r\n",
    "empty_body": b"From: alice@example.test\r\nSubject: nothing\r\n\r\n",
    "signed_by_someone_else": b"DKIM-Signature: v=1; a=rsa-sha256; d=other.test; s=x; h=from;\r\n"
    b" bh=AAAA; b=AAAA\r\nFrom: alice@example.test\r\nSubject: x\r\n\r\nbody\r\n",
}


def _entries(keys: Keys, canonicalization: str = "relaxed/relaxed") -> list[signer.Entry]:
    return signer.from_config(
        [DkimConfig(domain=DOMAIN, selector=s, key_file=str(keys.path(s)), canonicalization=canonicalization)
         for s in (RSA, ED)]
    )  # fmt: skip


def _signed(keys: Keys, message: bytes, canonicalization: str = "relaxed/relaxed") -> bytes:
    fields, results = signer.sign(_entries(keys, canonicalization), message, T)
    assert [r[:2] for r in results] == [("rsa", "signed"), ("ed25519", "signed")]
    return fields + message


@pytest.mark.parametrize("canonicalization", ["relaxed/relaxed", "simple/simple"])
@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_dkimpy_and_opendkim_verify_both(dkim_keys: Keys, name: str, canonicalization: str) -> None:
    message = _signed(dkim_keys, MESSAGES[name], canonicalization)
    assert dkim_keys.dkimpy(message)[:2] == [True, True]
    verdicts = dkim_keys.opendkim(message)
    assert verdicts[RSA] == "pass" and verdicts[ED] == "pass", verdicts


def test_someone_elses_signature_stays_valid(dkim_keys: Keys) -> None:
    """A message signed upstream (by another selector here) keeps a valid first signature."""
    theirs = signer.from_config([DkimConfig(domain=DOMAIN, selector=RSA, key_file=str(dkim_keys.path(RSA)))])
    upstream_fields, _ = signer.sign(theirs, MESSAGES["plain"], T - 60)
    upstream = upstream_fields + MESSAGES["plain"]
    ours = signer.from_config([DkimConfig(domain=DOMAIN, selector=ED, key_file=str(dkim_keys.path(ED)))])
    fields, results = signer.sign(ours, upstream, T)
    assert results == [("ed25519", "signed", DOMAIN)]
    both = fields + upstream
    assert dkim_keys.dkimpy(both) == [True, True]
    assert dkim_keys.opendkim(both) == {ED: "pass", RSA: "pass"}


def test_same_d_and_s_is_not_signed_again(dkim_keys: Keys) -> None:
    once = _signed(dkim_keys, MESSAGES["plain"])
    fields, results = signer.sign(_entries(dkim_keys), once, T + 100)
    assert fields == b"" and [r[1] for r in results] == ["exists", "exists"]


def test_from_domain_and_subdomains_only(dkim_keys: Keys) -> None:
    entries = _entries(dkim_keys)
    signed = ["a@example.test", "a@news.example.test", "a@EXAMPLE.TEST"]
    for sender in [*signed, "a@notexample.test", "a@example.test.evil", "a@other.test"]:
        signs = sender in signed
        msg = f"From: {sender}\r\n\r\nx\r\n".encode()
        assert bool(signer.sign(entries, msg, T)[0]) is signs, sender
    two_froms = b"From: a@example.test\r\nFrom: b@example.test\r\n\r\nx\r\n"
    assert signer.sign(entries, two_froms, T) == (b"", [])
    assert signer.sign(entries, b"Subject: no from\r\n\r\nx\r\n", T) == (b"", [])


def test_header_list_from_oversigned_absent_not_listed_no_l_tag(dkim_keys: Keys) -> None:
    fields, _ = signer.sign(_entries(dkim_keys), MESSAGES["plain"], T)
    first = fields.split(b"DKIM-Signature:")[1].replace(b"\r\n", b"").replace(b"\t", b"")
    tags = dict(re.findall(rb"\s*(\w+)=([^;]*)", first))
    assert tags[b"h"].split(b":") == [b"from", b"from", b"to", b"subject", b"date", b"message-id"]
    assert b"l" not in tags and tags[b"t"] == str(T).encode() and tags[b"d"] == DOMAIN.encode()
    assert tags[b"c"] == b"relaxed/relaxed"
    custom = signer.from_config([DkimConfig(domain=DOMAIN, selector=RSA, key_file=str(dkim_keys.path(RSA)),
                                            headers=("Subject", "X-Absent"))])  # fmt: skip
    fields, _ = signer.sign(custom, MESSAGES["plain"], T)
    assert b"h=from:from:subject;" in fields  # From is always signed, and once more than it occurs


def test_signing_is_deterministic(dkim_keys: Keys) -> None:
    """A retry after a restart re-signs the stored message: the same bytes come out."""
    entries = _entries(dkim_keys)
    message = MESSAGES["mime_attachment"]
    assert signer.sign(entries, message, T) == signer.sign(entries, message, T)


def test_body_canonicalisation_matches_dkimpy() -> None:
    from dkim import canonicalization as ref

    for body in [b"", b"\r\n", b"a", b"a \t\r\n\r\n", b"a\r\r\n\r\n", b"a\n\r\n\r\n", b" x  y \r\n\t\r\n",
                 b"a\r", b"\r\n\r\n\r\n", b"x\r\n \r\n"]:  # fmt: skip
        assert canon.relaxed_body(body) == ref.Relaxed.canonicalize_body(body), body
        assert canon.simple_body(body) == ref.Simple.canonicalize_body(body), body


def test_from_domain_forms() -> None:
    cases = {
        b"From: a@b.test\r\n": "b.test",
        b'From: "Doe, J @ home" <j@Mail.B.test>\r\n': "mail.b.test",
        b"from :j@b.test (Joe @ work)\r\n": "b.test",
        b"From: Joe\r\n <j@b.test>\r\n": "b.test",
        "From: <j@bücher.test>\r\n".encode(): "xn--bcher-kva.test",
        b"From: undisclosed\r\n": None,
    }
    for header, want in cases.items():
        assert canon.from_domain(header) == want, header


_name = st.sampled_from(["To", "Cc", "Subject", "Date", "Message-ID", "Reply-To", "X-Other", "References",
                         "content-type", "MIME-Version", "List-Id"])  # fmt: skip
_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FF, blacklist_characters="\x7f"),
                max_size=60)  # fmt: skip
_line = st.binary(max_size=120).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@st.composite
def _messages(draw: st.DrawFn) -> bytes:
    headers = [b"From: " + draw(_text).replace(":", "").encode() + b" <a@example.test>"]
    for _ in range(draw(st.integers(0, 8))):
        value = draw(_text).encode()
        fold = draw(st.sampled_from([b"", b"\r\n ", b"\r\n\t", b" \t "]))
        headers.insert(draw(st.integers(0, len(headers))), draw(_name).encode() + b":" + fold + value)
    ending = draw(st.sampled_from([b"", b"\r\n", b"\r\n\r\n\r\n"]))
    body = b"\r\n".join(draw(st.lists(_line, max_size=20))) + ending
    return b"\r\n".join(headers) + b"\r\n\r\n" + body


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message=_messages(), canonicalization=st.sampled_from(CANONICALIZATIONS))
def test_random_messages_verify_with_dkimpy(dkim_keys: Keys, message: bytes, canonicalization: str) -> None:
    assert dkim_keys.dkimpy(_signed(dkim_keys, message, canonicalization)) == [True, True]
