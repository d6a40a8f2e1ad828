# SPDX-License-Identifier: MIT
"""DKIM signatures (RFC 6376; Ed25519 by RFC 8463): header selection and assembly.

``sign`` returns the ``DKIM-Signature:`` fields to put on top of a message, one per
``[[dkim]]`` entry whose domain is the ``From:`` domain or a parent of it, unless the
message already carries a signature with that entry's d= and s=. Choices fixed here:
``From`` is over-signed (listed once more than it occurs, so no second ``From`` can be
added later), headers the message lacks are not listed, ``l=`` is never used, and
``t=`` is the message's arrival time. RSA PKCS#1 v1.5 and Ed25519 are deterministic,
so signing the same stored message with the same key always gives the same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from fastmta.config import DkimConfig
from fastmta.dkim import canon, keys

DEFAULT_HEADERS = (
    "from", "to", "cc", "subject", "date", "message-id", "reply-to", "mime-version",
    "content-type", "content-transfer-encoding", "in-reply-to", "references", "list-id",
    "list-unsubscribe", "list-unsubscribe-post", "feedback-id",
)  # fmt: skip
B64_FOLD = 72  # characters of b= per folded line
_TAG = re.compile(rb"(?:^|;)\s*([A-Za-z][A-Za-z0-9_]*)\s*=\s*([^;]*)")
SIGNED, EXISTS, ERROR = "signed", "exists", "error"


@dataclass(frozen=True)
class Entry:
    """One ``[[dkim]]`` entry with its key loaded."""

    domain: str  # ASCII, lower-case
    selector: str
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    algorithm: str  # "rsa" | "ed25519"
    headers: tuple[bytes, ...] = tuple(h.encode() for h in DEFAULT_HEADERS)
    header_canon: str = "relaxed"
    body_canon: str = "relaxed"

    def covers(self, domain: str) -> bool:
        return domain == self.domain or domain.endswith("." + self.domain)

    def signature(self, fields: list[tuple[bytes, bytes]], bh: bytes, timestamp: int) -> bytes:
        """The complete ``DKIM-Signature:`` field (CRLF-terminated) over ``fields``."""
        names, h_tag = _plan(self.headers, tuple(name for name, _ in fields))
        # RFC 6376 §5.4.2: each listed name takes the next instance from the bottom.
        left: dict[bytes, list[bytes]] = {}
        for name, raw in fields:
            left.setdefault(name, []).append(raw)
        to_canon = canon.HEADER[self.header_canon]
        parts = [to_canon(left[n].pop()) for n in names if left.get(n)]
        head = (
            f"DKIM-Signature: v=1; a={self.algorithm}-sha256; c={self.header_canon}/{self.body_canon};"
            f" d={self.domain}; s={self.selector};\r\n\tt={timestamp}; h={h_tag};\r\n"
            f"\tbh={base64.b64encode(bh).decode()};\r\n\tb="
        ).encode("ascii")
        unsigned = to_canon(head + b"\r\n")[:-2]
        data = b"".join(parts) + unsigned
        if isinstance(self.key, ed25519.Ed25519PrivateKey):
            sig = self.key.sign(hashlib.sha256(data).digest())
        else:
            sig = self.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        b64 = base64.b64encode(sig)
        folded = b"\r\n\t ".join(b64[i : i + B64_FOLD] for i in range(0, len(b64), B64_FOLD))
        return head + folded + b"\r\n"


def from_config(configs: Sequence[DkimConfig]) -> list[Entry]:
    """Entries with their keys loaded; ``keys.KeyFileError`` for an unusable key."""
    out = []
    for c in configs:
        key, algorithm = keys.load(c.key_file)
        header_canon, _, body_canon = c.canonicalization.partition("/")
        headers = tuple(dict.fromkeys(h.lower().encode("ascii") for h in c.headers)) or Entry.headers
        if b"from" not in headers:  # RFC 6376 §5.4: From must be signed
            headers = (b"from", *headers)
        out.append(
            Entry(ascii_domain(c.domain), c.selector, key, algorithm, headers, header_canon, body_canon)
        )
    return out


def ascii_domain(domain: str) -> str:
    """The A-label form a ``From:`` domain is compared in (``canon.from_domain``)."""
    return domain if domain.isascii() else domain.encode("idna").decode("ascii")


_PLANS: dict[tuple[tuple[bytes, ...], tuple[bytes, ...]], tuple[list[bytes], str]] = {}
PLANS_KEPT = 1024  # header layouts remembered; bulk mail repeats a handful of them


def _plan(headers: tuple[bytes, ...], present: tuple[bytes, ...]) -> tuple[list[bytes], str]:
    """(names to sign, folded ``h=`` value) for a message whose fields are ``present``.

    Depends only on the entry's list and the message's field names, so it is kept per
    layout: a sender's messages share one."""
    key = (headers, present)
    plan = _PLANS.get(key)
    if plan is None:
        counts = Counter(present)
        names: list[bytes] = []
        for h in headers:
            names += [h] * (counts.get(h, 0) + (h == b"from"))
        if len(_PLANS) >= PLANS_KEPT:
            _PLANS.clear()
        plan = _PLANS[key] = (names, _fold_names(names))
    return plan


def _fold_names(names: list[bytes]) -> str:
    """``h=`` names joined by ``:``, folded before a name that would pass ~70 columns."""
    out: list[str] = []
    width = 0
    for n in names:
        s = n.decode("ascii")
        if out and width + len(s) > 70:
            out.append("\r\n\t" + s)
            width = len(s)
        else:
            out.append(s)
            width += len(s) + 1
    return ":".join(out)


def existing(fields: list[tuple[bytes, bytes]]) -> set[tuple[str, str]]:
    """(d=, s=) of every ``DKIM-Signature`` already on the message, lower-case."""
    found = set()
    for name, raw in fields:
        if name != b"dkim-signature":
            continue
        value = raw.partition(b":")[2].replace(b"\r\n", b"")
        tags = {k.lower(): v.strip() for k, v in _TAG.findall(value)}
        d, s = tags.get(b"d", b""), tags.get(b"s", b"")
        found.add((d.decode("ascii", "replace").lower().rstrip("."), s.decode("ascii", "replace").lower()))
    return found


def sign(
    entries: Sequence[Entry], message: bytes, timestamp: int
) -> tuple[bytes, list[tuple[str, str, str]]]:
    """(the new fields, [(algorithm, signed|exists, domain)]) for a stored message.

    Nothing (``b"", []``) when no entry covers the ``From:`` domain, or the message
    has no single ``From:``.
    """
    header, body = canon.split(message)
    domain = canon.from_domain(header)
    if domain is None:
        return b"", []
    matching = [e for e in entries if e.covers(domain)]
    if not matching:
        return b"", []
    fields = canon.fields(header)
    already = existing(fields)
    out: list[bytes] = []
    results = []
    body_hashes: dict[str, bytes] = {}
    for e in matching:
        if (e.domain, e.selector.lower()) in already:
            results.append((e.algorithm, EXISTS, e.domain))
            continue
        bh = body_hashes.get(e.body_canon)
        if bh is None:
            bh = body_hashes[e.body_canon] = canon.body_hash(body, e.body_canon)
        out.append(e.signature(fields, bh, timestamp))
        results.append((e.algorithm, SIGNED, e.domain))
    return b"".join(out), results
