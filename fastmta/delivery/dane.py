# SPDX-License-Identifier: MIT
"""DANE for SMTP (RFC 7672): TLSA records and the check of a peer's certificates against them.

Pure functions of record texts and DER bytes. Only DANE-TA(2) and DANE-EE(3) are
usable for SMTP (RFC 7672 §3.1.3: the PKIX usages 0 and 1 are not); selectors 0
(whole certificate) and 1 (SubjectPublicKeyInfo); matching types 0 (exact), 1
(SHA-256) and 2 (SHA-512). DANE-EE checks the key alone: names and dates do not
matter (§3.1.1). DANE-TA needs a chain from the leaf up to the matching
certificate, each signed by the next, and the leaf must name the MX host (§3.2.2).
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

DANE_TA, DANE_EE = 2, 3


@dataclass(frozen=True, slots=True)
class Tlsa:
    usage: int
    selector: int
    mtype: int
    data: bytes

    @property
    def usable(self) -> bool:
        return self.usage in (DANE_TA, DANE_EE) and self.selector in (0, 1) and self.mtype in (0, 1, 2)


def parse_tlsa(rdata: str) -> Tlsa | None:
    """``"3 1 1 ABCD…"`` (dnspython's text) → Tlsa; None for text that is not a TLSA record."""
    parts = rdata.split()
    if len(parts) < 4 or not all(p.isdigit() for p in parts[:3]):
        return None
    try:
        data = bytes.fromhex("".join(parts[3:]))
    except ValueError:
        return None
    return Tlsa(int(parts[0]), int(parts[1]), int(parts[2]), data)


def _digest(mtype: int, blob: bytes) -> bytes:
    if mtype == 1:
        return hashlib.sha256(blob).digest()
    if mtype == 2:
        return hashlib.sha512(blob).digest()
    return blob


def _selected(selector: int, cert: x509.Certificate, der: bytes) -> bytes:
    if selector == 0:
        return der
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _matches(rec: Tlsa, cert: x509.Certificate, der: bytes) -> bool:
    return _digest(rec.mtype, _selected(rec.selector, cert, der)) == rec.data


def check(records: tuple[Tlsa, ...], chain: list[bytes], names: tuple[str, ...]) -> str | None:
    """None when the peer's ``chain`` (DER, leaf first) satisfies a usable record, else the
    TLS-RPT result type saying why not (RFC 8460 §4.3)."""
    usable = [r for r in records if r.usable]
    if not usable:
        return "tlsa-invalid"
    if not chain:
        return "validation-failure"
    try:
        certs = [x509.load_der_x509_certificate(der) for der in chain]
    except ValueError:
        return "validation-failure"
    leaf = certs[0]
    for rec in usable:
        if rec.usage == DANE_EE and _matches(rec, leaf, chain[0]):
            return None
    name_ok: bool | None = None
    for rec in usable:
        if rec.usage != DANE_TA:
            continue
        for depth in range(len(certs)):
            if not _matches(rec, certs[depth], chain[depth]) or not _signed_up_to(certs, depth):
                continue
            if name_ok is None:
                name_ok = _names_match(leaf, names)
            if name_ok:
                return None
    return "certificate-host-mismatch" if name_ok is False else "validation-failure"


def _signed_up_to(certs: list[x509.Certificate], depth: int) -> bool:
    """certs[0] … certs[depth] form a chain: each is signed by the next."""
    for child, parent in zip(certs[:depth], certs[1 : depth + 1], strict=True):
        try:
            child.verify_directly_issued_by(parent)
        except (InvalidSignature, ValueError, TypeError):
            return False
    return True


def _names_match(cert: x509.Certificate, names: tuple[str, ...]) -> bool:
    """The leaf names one of ``names`` (DNS SANs, ``*.`` for one left label; RFC 6125)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns_names = []
    wanted = {n.lower().rstrip(".") for n in names}
    for pattern in dns_names:
        p = pattern.lower().rstrip(".")
        if p in wanted:
            return True
        if p.startswith("*.") and any(n.partition(".")[2] == p[2:] and n.partition(".")[0] for n in wanted):
            return True
    return False


def peer_chain(ssl_object: Any) -> list[bytes]:
    """The certificates the peer sent (DER, leaf first), unverified.

    Python 3.13 has ``SSLObject.get_unverified_chain``; before it, the same call is on
    the private ``_sslobj`` (since 3.10). Without either, only the leaf.
    """
    if ssl_object is None:
        return []
    public = getattr(ssl_object, "get_unverified_chain", None)
    if public is not None:
        return [bytes(c) for c in public() or ()]
    inner = getattr(ssl_object, "_sslobj", None)
    private = getattr(inner, "get_unverified_chain", None)
    if private is not None:
        return [c.public_bytes(ssl._ssl.ENCODING_DER) for c in private() or ()]  # type: ignore[attr-defined]
    leaf = ssl_object.getpeercert(binary_form=True)
    return [leaf] if leaf else []
