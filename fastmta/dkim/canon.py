# SPDX-License-Identifier: MIT
"""DKIM canonicalisation and the body hash (RFC 6376 §3.4), pure functions of bytes.

The body is canonicalised with whole-buffer operations (one ``re.sub``, one
``bytes.replace``, one ``rstrip``) and hashed in one hashlib call, never line by
line in Python: a 100 KiB body costs what those C loops cost. Headers are split
into fields once; a message has tens of them, so per-field Python is fine.
Messages are stored with CRLF line ends (the parser's contract); a bare LF or CR
inside a line is content, as it is for every verifier.
"""

from __future__ import annotations

import hashlib
import re

_WSP_RUN = re.compile(rb"[ \t]+")
_FIELD_START = re.compile(rb"\r\n(?![ \t])")
_FROM = re.compile(rb"(?im)^from[ \t]*:((?:[^\r\n]|\r\n[ \t])*)")
_COMMENT = re.compile(rb"\([^()]*\)")
_FOLD = re.compile(rb"\r\n(?=[ \t])")


def header_end(message: bytes) -> int:
    """Length of the header block (its last CRLF included): one ``find``."""
    if message.startswith(b"\r\n"):
        return 0
    end = message.find(b"\r\n\r\n")
    return len(message) if end < 0 else end + 2


def split(message: bytes) -> tuple[bytes, bytes]:
    """(header block with its last CRLF, body); no blank line → all header, empty body."""
    end = header_end(message)
    return message[:end], message[end + 2 :]


def fields(header: bytes) -> list[tuple[bytes, bytes]]:
    """Header block → [(lower-case name, whole field with its CRLF)], top to bottom.

    A line without a colon (not a field) is left out: it cannot be signed.
    """
    out = []
    if header.endswith(b"\r\n"):
        header = header[:-2]
    for raw in _FIELD_START.split(header) if header else ():
        colon = raw.find(b":")
        if colon > 0:
            out.append((raw[:colon].rstrip(b" \t").lower(), raw + b"\r\n"))
    return out


def relaxed_header(field: bytes) -> bytes:
    """RFC 6376 §3.4.2: lower-case name, unfolded, runs of WSP as one SP, no WSP at the ends."""
    name, _, value = field.partition(b":")
    value = _WSP_RUN.sub(b" ", value.replace(b"\r\n", b"")).strip(b" ")
    return name.rstrip(b" \t").lower() + b":" + value + b"\r\n"


def simple_header(field: bytes) -> bytes:
    return field


def _trailing_lines_to_one(body: bytes) -> bytes:
    """The CRLF run at the end becomes one CRLF; a body without a final CRLF gets one.

    Found without a loop: among the trailing CR/LF octets the run of CRLF pairs starts
    after the last doubled octet (``CRCR`` or ``LFLF``), on a CR, and ends on an LF.
    """
    tail = body[len(body.rstrip(b"\r\n")) :]
    run = tail[max(tail.rfind(b"\r\r"), tail.rfind(b"\n\n")) + 1 :]
    if run.startswith(b"\n"):
        run = run[1:]
    if not run.endswith(b"\n"):  # the body ends in a bare CR: no CRLF run at all
        run = b""
    return body[: len(body) - len(run)] + b"\r\n"


def simple_body(body: bytes) -> bytes:
    """RFC 6376 §3.4.3: trailing empty lines removed; an empty body is one CRLF."""
    return _trailing_lines_to_one(body) if body else b"\r\n"


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 §3.4.4: WSP runs as one SP, none at line ends, no trailing empty lines."""
    # C-speed passes instead of a regex (one ``re.sub`` took 0.6-1.3 ms on 100 KiB; see
    # docs/performance.md, DKIM): tabs become spaces, then each pass halves every run.
    if b"\t" in body:
        body = body.replace(b"\t", b" ")
    while b"  " in body:
        body = body.replace(b"  ", b" ")
    body = body.replace(b" \r\n", b"\r\n")
    if body.endswith(b" "):
        body = body[:-1]
    body = _trailing_lines_to_one(body)
    return b"" if body == b"\r\n" else body


BODY = {"simple": simple_body, "relaxed": relaxed_body}
HEADER = {"simple": simple_header, "relaxed": relaxed_header}


def body_hash(body: bytes, canon: str) -> bytes:
    """SHA-256 of the canonical body (``l=`` is never used: the whole body counts)."""
    return hashlib.sha256(BODY[canon](body)).digest()


def from_domain(header: bytes) -> str | None:
    """The domain of the one ``From:`` address, lower-case; None when there is not exactly one.

    Accepts ``Name <user@dom>``, ``user@dom (comment)`` and UTF-8 (RFC 6532) domains,
    which are compared in their ASCII (A-label) form.
    """
    found = _FROM.findall(header)
    if len(found) != 1:
        return None
    value = _FOLD.sub(b"", found[0])
    lt = value.rfind(b"<")
    if lt >= 0:
        gt = value.find(b">", lt)
        value = value[lt + 1 : gt if gt >= 0 else len(value)]
    else:
        value = _COMMENT.sub(b"", value)
    _, at, domain_b = value.strip().rpartition(b"@")
    domain_b = domain_b.strip(b" \t>").rstrip(b".").lower()
    if not at or not domain_b or b" " in domain_b:
        return None
    try:
        domain = domain_b.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    return domain
