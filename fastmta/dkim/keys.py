# SPDX-License-Identifier: MIT
"""DKIM private keys: load and check, generate, and the DNS record to publish.

A key must be a PEM RSA (at least 1024 bits, RFC 8301; 2048 advised) or Ed25519
(RFC 8463) private key, readable by us and by nobody else: a key that others can
read lets them sign as the domain. Every problem is a message naming the entry's
``key_file``, for ``check-config`` and start-up alike.
"""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from fastmta.config import DkimConfig

MIN_RSA_BITS = 1024
TXT_CHUNK = 255  # octets per character-string of a TXT record (RFC 1035 §3.3)

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class KeyFileError(ValueError):
    """A key file that cannot be used; the text says why (without the key)."""


def load(path: str) -> tuple[PrivateKey, str]:
    """(key, algorithm ``"rsa"`` or ``"ed25519"``) from a PEM file, or ``KeyFileError``."""
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise KeyFileError(f"cannot read {path}: {e.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{path} is open to group or others (mode {st.st_mode & 0o777:o}; chmod 600 it)")
    try:
        key: Any = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        why = (str(e).splitlines() or [type(e).__name__])[0][:80]
        raise KeyFileError(f"{path} is not an unencrypted PEM private key ({why})") from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key, "ed25519"
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeyFileError(
                f"{path}: RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} (2048 advised)"
            )
        return key, "rsa"
    raise KeyFileError(f"{path}: {type(key).__name__.removeprefix('_')} key; DKIM signs with RSA or Ed25519")


def check(entries: Sequence[DkimConfig]) -> list[str]:
    """One line per unusable key, naming ``dkim[N].key_file`` (the check-config form)."""
    errors = []
    for i, entry in enumerate(entries):
        try:
            load(entry.key_file)
        except KeyFileError as e:
            errors.append(f"dkim[{i}].key_file: {e}")
    return errors


def generate(algorithm: str, bits: int = 2048) -> PrivateKey:
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def write(key: PrivateKey, path: str) -> None:
    """PKCS#8 PEM, created 0600; never overwrites (an existing key may be published)."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())  # fmt: skip
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def public_value(key: PrivateKey) -> tuple[str, str]:
    """(``k=`` value, ``p=`` value): RSA as SubjectPublicKeyInfo, Ed25519 as the raw 32 octets."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return "ed25519", base64.b64encode(raw).decode("ascii")
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)  # fmt: skip
    return "rsa", base64.b64encode(der).decode("ascii")


def txt_value(key: PrivateKey) -> str:
    """The TXT record's text: ``v=DKIM1; k=…; p=…``."""
    k, p = public_value(key)
    return f"v=DKIM1; k={k}; p={p}"


def dns_record(domain: str, selector: str, key: PrivateKey) -> str:
    """``S._domainkey.D. IN TXT "…" "…"``: one line, character-strings of at most 255 octets."""
    text = txt_value(key)
    chunks = " ".join(f'"{text[i : i + TXT_CHUNK]}"' for i in range(0, len(text), TXT_CHUNK))
    return f"{selector}._domainkey.{domain}. IN TXT {chunks}"
