# SPDX-License-Identifier: MIT
"""DANE's certificate check (RFC 7672 §3) against real certificates from trustme."""

from __future__ import annotations

import datetime
import hashlib

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fastmta.delivery.dane import Tlsa, check, parse_tlsa

MX = ("mx1.a.test",)


def ders(leaf: trustme.LeafCert) -> list[bytes]:
    return [
        x509.load_pem_x509_certificate(p.bytes()).public_bytes(Encoding.DER) for p in leaf.cert_chain_pems
    ]


def digest(mtype: int, blob: bytes) -> bytes:
    return {0: blob, 1: hashlib.sha256(blob).digest(), 2: hashlib.sha512(blob).digest()}[mtype]


def spki(der: bytes) -> bytes:
    return (
        x509.load_der_x509_certificate(der)
        .public_key()
        .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )


@pytest.mark.parametrize("selector", [0, 1])
@pytest.mark.parametrize("mtype", [0, 1, 2])
def test_dane_ee_every_selector_and_matching_type(selector: int, mtype: int) -> None:
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    chain = ders(
        trustme.CA().issue_cert("elsewhere.test", not_before=past, not_after=past + datetime.timedelta(1))
    )
    blob = chain[0] if selector == 0 else spki(chain[0])
    assert check((Tlsa(3, selector, mtype, digest(mtype, blob)),), chain, MX) is None  # names, dates ignored
    wrong = Tlsa(3, selector, mtype, digest(mtype, blob + b"x"))
    assert check((wrong,), chain, MX) == "validation-failure"


def test_dane_ta_chain_and_name() -> None:
    root = trustme.CA()
    issuer = root.create_child_ca()
    chain = ders(issuer.issue_cert("mx1.a.test"))
    assert len(chain) == 2  # leaf and the intermediate the server sends
    ta = Tlsa(2, 1, 1, digest(1, spki(chain[1])))
    assert check((ta,), chain, MX) is None
    assert check((ta,), chain, ("mx2.a.test",)) == "certificate-host-mismatch"
    wild = ders(issuer.issue_cert("*.a.test"))
    assert check((ta,), wild, MX) is None and check((ta,), wild, ("a.test",)) == "certificate-host-mismatch"
    other = ders(root.create_child_ca().issue_cert("mx1.a.test"))  # a sibling issuer: no chain to the TA
    assert check((ta,), [other[0], chain[1]], MX) == "validation-failure"


def test_unusable_records_and_parse() -> None:
    chain = ders(trustme.CA().issue_cert("mx1.a.test"))
    h = digest(1, spki(chain[0]))
    for usage, sel, mt in [(0, 1, 1), (1, 1, 1), (3, 2, 1), (3, 1, 3)]:  # PKIX usages, bad selector/type
        assert not Tlsa(usage, sel, mt, h).usable
        assert check((Tlsa(usage, sel, mt, h),), chain, MX) == "tlsa-invalid"
    assert check((Tlsa(3, 1, 1, h),), [], MX) == "validation-failure"
    assert parse_tlsa("3 1 1 " + h.hex().upper()) == Tlsa(3, 1, 1, h)
    assert parse_tlsa("3 1 1 ABCD EF01") == Tlsa(3, 1, 1, bytes.fromhex("abcdef01"))
    assert parse_tlsa("3 1 1 zz") is None and parse_tlsa("3 1") is None and parse_tlsa("x 1 1 00") is None
