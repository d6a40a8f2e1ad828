# SPDX-License-Identifier: MIT
"""The "TLS-Required: No" header (RFC 8689 §5) as the delivery path reads it, and the
record parsers of DANE and TLS-RPT under random input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastmta.delivery.dane import Tlsa, parse_tlsa
from fastmta.delivery.mtasts import parse_txt
from fastmta.delivery.tlspolicy import tls_optional
from fastmta.delivery.tlsrpt import parse_rua
from fastmta.spool import records
from fastmta.spool.records import Envelope, Recipient


@pytest.mark.parametrize(("message", "optional"), [
    (b"TLS-Required: No\r\nSubject: x\r\n\r\nbody\r\n", True),
    (b"Subject: x\r\ntls-required:no\r\n\r\nbody\r\n", True),
    (b"Subject: x\r\nTLS-REQUIRED: NO \r\n\r\nbody\r\n", True),
    (b"Subject: x\r\nTLS-Required: Yes\r\n\r\nbody\r\n", False),
    (b"Subject: x\r\nX-TLS-Required: No\r\n\r\nbody\r\n", False),  # another field
    (b"Subject: TLS-Required: No\r\n\r\nbody\r\n", False),  # inside a value
    (b"Subject: x\r\n\r\nTLS-Required: No\r\n", False),  # in the body
    (b"TLS-Required: No", True),  # no body at all
])  # fmt: skip
def test_tls_required_no(message: bytes, optional: bool) -> None:
    assert tls_optional(message) is optional


@given(st.binary(max_size=300))
def test_header_check_never_raises(message: bytes) -> None:
    assert tls_optional(message) in (True, False)


@given(st.text(max_size=200))
def test_record_parsers_never_raise(text: str) -> None:
    assert parse_tlsa(text) is None or isinstance(parse_tlsa(text), Tlsa)
    assert isinstance(parse_rua((text,)), list)
    assert parse_txt((text,)) is None or parse_txt((text,)).isalnum()  # type: ignore[union-attr]


def test_requiretls_flag_survives_the_spool_record() -> None:
    """The flag rides in the envelope's MAIL parameters, which every record version keeps."""
    env = Envelope(
        "0123456789abcdef", "a@x.test", [Recipient("b@y.test")], params={"REQUIRETLS": "", "BODY": "8BITMIME"}
    )
    assert records.decode(env.id, records.encode(env)).params == {"REQUIRETLS": "", "BODY": "8BITMIME"}
