# SPDX-License-Identifier: MIT
"""The injection API's message building without a server: placeholder filling against
Jinja2 itself, and each text part's transfer encoding (7bit or quoted-printable) decoded
back by the stdlib ``email`` package, at and past the 998-octet line limit."""

from __future__ import annotations

import binascii
import email
import email.policy

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jinja2.sandbox import SandboxedEnvironment

from fastmta.api.inject import MAX_7BIT_LINE, _compile, boundary_finder, parse, text_part

BOUNDARY = "===============1234567890123456789=="
NAMES = st.sampled_from(["a", "b", "name", "x_1"])
# no CR: Jinja turns every line end into LF, and text_part makes them all CRLF anyway
LITERAL = st.text(st.characters(blacklist_characters="{}%#\r"), max_size=20)
VALUE = st.one_of(st.text(max_size=10), st.integers(), st.none())


@given(
    st.lists(st.tuples(LITERAL, NAMES), max_size=6),
    LITERAL,
    st.dictionaries(NAMES, VALUE),
    st.booleans(),
)
def test_placeholders_fill_as_jinja_renders_them(
    pieces: list[tuple[str, str]], tail: str, subs: dict[str, object], html: bool
) -> None:
    text = "".join(f"{lit}{{{{ {name} }}}}" for lit, name in pieces) + tail
    jinja = SandboxedEnvironment(autoescape=html, keep_trailing_newline=True)
    assert _compile(html, text)(subs) == jinja.from_string(text).render(subs)


def _decoded(cte: bytes, body: bytes) -> str:
    head = f"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: {cte.decode()}\r\n\r\n"
    part = email.message_from_bytes(head.encode() + body, policy=email.policy.default)
    return str(part.get_content())


def _normal(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text if text.endswith("\n") else text + "\n"


@given(st.text(st.characters(codec="utf-8"), max_size=3000))
def test_a_text_part_decodes_back_to_its_text(text: str) -> None:
    cte, body = text_part(text, boundary_finder((BOUNDARY,)))
    assert body.endswith(b"\r\n")
    assert b"\n" not in body.replace(b"\r\n", b"") and b"\r" not in body.replace(b"\r\n", b"")
    lines = body.split(b"\r\n")
    if cte == b"7bit":
        assert body.isascii() and b"\x00" not in body and BOUNDARY.encode() not in body
        assert max(map(len, lines)) <= MAX_7BIT_LINE
    else:
        assert cte == b"quoted-printable" and max(map(len, lines)) <= 76
        assert binascii.a2b_qp(body).decode("utf-8").replace("\r\n", "\n") == _normal(text)
    assert _decoded(cte, body).replace("\r\n", "\n") == _normal(text)


@pytest.mark.parametrize(
    ("text", "cte"),
    [
        ("x" * MAX_7BIT_LINE, b"7bit"),
        ("x" * (MAX_7BIT_LINE + 1), b"quoted-printable"),
        (("y" * 80 + "\n") * 50 + "x" * MAX_7BIT_LINE + "\n" + "z", b"7bit"),
        (("y" * 80 + "\n") * 50 + "x" * (MAX_7BIT_LINE + 1) + "\n" + "z", b"quoted-printable"),
        ("a=b&c=d https://example.test/?q=1\n", b"7bit"),
        ("héllo\n", b"quoted-printable"),
        ("nul\x00\n", b"quoted-printable"),
        (f"--{BOUNDARY}\nContent-Type: text/html\n", b"quoted-printable"),
        ("===============\n", b"7bit"),  # the boundaries' common start alone is harmless
    ],
    ids=["998", "999", "998-after-short-lines", "999-after-short-lines", "url", "non-ascii", "nul",
         "boundary", "boundary-prefix"],
)  # fmt: skip
def test_transfer_encoding_at_and_past_the_limits(text: str, cte: bytes) -> None:
    got, body = text_part(text, boundary_finder((BOUNDARY, "===============9999==")))
    assert got == cte
    assert _decoded(got, body).replace("\r\n", "\n") == _normal(text)


def test_each_recipient_gets_the_encoding_its_own_text_needs() -> None:
    content = {
        "from": "a@src.test",
        "subject": "s",
        "text_body": "Hello {{ name }}\n",
        "html_body": "<p>{{ name }}</p>",
    }
    doc = {"envelope_sender": "a@src.test", "content": content,
           "recipients": [{"email": "r@a.test", "substitutions": {"name": "Zoë"}},
                          {"email": "s@a.test", "substitutions": {"name": "Bob"}}]}  # fmt: skip
    inj = parse(doc, 10)
    for i, (name, cte) in enumerate([("Zoë", "quoted-printable"), ("Bob", "7bit")]):
        msg = email.message_from_bytes(inj.message(i, "ID", "h.test"), policy=email.policy.default)
        parts = [p for p in msg.walk() if not p.is_multipart()]
        assert [p["Content-Transfer-Encoding"] for p in parts] == [cte, cte]
        assert [str(p.get_content()).strip() for p in parts] == [f"Hello {name}", f"<p>{name}</p>"]
