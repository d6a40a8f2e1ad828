# SPDX-License-Identifier: MIT
"""MAIL/RCPT argument parsing (RFC 5321 §4.1.2, RFC 3461, RFC 6531) and its round trip."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastmta.smtp import replies as R
from fastmta.smtp.commands import (
    ArgError,
    domain_of,
    format_path,
    parse_mail,
    parse_params,
    parse_rcpt,
    split_path,  # fmt: skip
    xtext_decode,
    xtext_encode,
)

BIG = 1000


@pytest.mark.parametrize(
    ("arg", "sender", "params"),
    [
        ("<a@b.test>", "a@b.test", {}),
        ("<>", "", {}),
        (" <a@b.test>", "a@b.test", {}),
        ("a@b.test", "a@b.test", {}),
        ('<"x y"@b.test>', '"x y"@b.test', {}),
        ('<"a>b"@b.test> BODY=8bitmime', '"a>b"@b.test', {"BODY": "8BITMIME"}),
        ("<@r1.test,@r2.test:a@b.test>", "a@b.test", {}),
        ("<a@[192.0.2.1]>", "a@[192.0.2.1]", {}),
        ("<a@b.test> SIZE=1000 RET=hdrs ENVID=x+2By", "a@b.test", {"RET": "HDRS", "ENVID": "x+y"}),
        ("<ü@b.test> SMTPUTF8", "ü@b.test", {"SMTPUTF8": ""}),
        ("<a@b.test> AUTH=<>", "a@b.test", {}),
    ],
)
def test_parse_mail_ok(arg: str, sender: str, params: dict[str, str]) -> None:
    assert parse_mail(arg, BIG) == (sender, params)


@pytest.mark.parametrize(
    ("arg", "reply"),
    [
        ("<a@b.test", R.R_501_BAD_ADDRESS),
        ("<a b@b.test>", R.R_501_BAD_SENDER),
        ("<@b.test>", R.R_501_BAD_SENDER),
        ("<a@>", R.R_501_BAD_SENDER),
        ("<a@-b.test>", R.R_501_BAD_SENDER),
        ("<a..b@b.test>", R.R_501_BAD_SENDER),
        ("<ü@b.test>", R.R_553_NEED_SMTPUTF8),
        ("<a@b.test> SIZE=1001", R.R_552_TOO_BIG),
        ("<a@b.test> SIZE=x", R.R_555_BAD_PARAM),
        ("<a@b.test> SIZE=1 SIZE=2", R.R_555_BAD_PARAM),
        ("<a@b.test> BODY=BINARYMIME", R.R_555_BAD_PARAM),
        ("<a@b.test> SMTPUTF8=yes", R.R_555_BAD_PARAM),
        ("<a@b.test> ENVID=a=b", R.R_555_BAD_PARAM),
        ("<a@b.test> X-UNKNOWN", R.R_555_BAD_PARAM),
        ("<a@b.test> =x", R.R_555_BAD_PARAM),
        ("<" + "a" * 65 + "@b.test>", R.R_501_BAD_SENDER),
        ("<a@" + "b" * 256 + ">", R.R_501_BAD_SENDER),
    ],
)
def test_parse_mail_errors(arg: str, reply: bytes) -> None:
    with pytest.raises(ArgError) as e:
        parse_mail(arg, BIG)
    assert e.value.reply == reply


def test_parse_rcpt() -> None:
    assert parse_rcpt("<b@c.test>", False) == ("b@c.test", "", "")
    assert parse_rcpt("<Postmaster>", False) == ("Postmaster", "", "")
    assert parse_rcpt("<b@c.test> NOTIFY=success,delay ORCPT=rfc822;b+40c.test", False) == (
        "b@c.test", "SUCCESS,DELAY", "rfc822;b@c.test")  # fmt: skip
    for bad in ("<b@c.test> NOTIFY=NEVER,SUCCESS", "<b@c.test> NOTIFY=BOGUS", "<b@c.test> ORCPT=rfc822",
                "<b@c.test> FOO=1"):  # fmt: skip
        with pytest.raises(ArgError) as e:
            parse_rcpt(bad, False)
        assert e.value.reply == R.R_555_BAD_PARAM
    with pytest.raises(ArgError):
        parse_rcpt("<>", False)
    with pytest.raises(ArgError) as e:
        parse_rcpt("<ü@c.test>", False)
    assert e.value.reply == R.R_553_NEED_SMTPUTF8
    assert parse_rcpt("<ü@ÿ.test>", True)[0] == "ü@ÿ.test"


def test_helpers() -> None:
    assert split_path('<"a>b"@c> X=1') == ('"a>b"@c', "X=1")
    assert parse_params("a=1  B") == {"A": "1", "B": ""}
    assert domain_of("A@Example.TEST.") == "example.test"
    assert domain_of("") == ""
    assert xtext_decode("a+2Bb+3D") == "a+b="


_local = st.from_regex(r"[a-z0-9!#$%&'*+/=?^_`{|}~-]{1,10}(\.[a-z0-9_-]{1,8}){0,2}", fullmatch=True)
_domain = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\.[a-z]{2,6}){1,2}", fullmatch=True)


@given(
    _local,
    _domain,
    st.sampled_from(["7BIT", "8BITMIME"]),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=20),
)
def test_round_trip(local: str, domain: str, body: str, envid: str) -> None:
    """parse ∘ format = id for paths and params (the delivery client formats, we parse)."""
    addr = f"{local}@{domain}"
    wire = format_path(addr, {"BODY": body, "ENVID": xtext_encode(envid)})
    sender, params = parse_mail(wire, BIG)
    assert sender == addr and params == {"BODY": body, "ENVID": envid}
