# SPDX-License-Identifier: MIT
"""The Date: and Message-ID: fields fastmta adds to mail from its own clients.

RFC 5322 §3.6 requires both; mail submitted by a program (sendmail) or by a
client on a submission listener (RFC 6409 §8.2, §8.3) often lacks them, and
Postfix adds them there too. One place formats them, so both paths agree. The
scan reads only the header block, once, and nothing is parsed further.
"""

from __future__ import annotations

import email.utils
import re
import time

# A field starts after a line end; "\n" as the anchor is three times faster than ^ with MULTILINE.
MAX_HEAD = 256 * 1024
_NAMES_RE = re.compile(rb"\n(date|message-id)[ \t]*:", re.IGNORECASE)


# (second, its field): formatdate costs ~40 µs, and the HTTP API adds one per message
_date: list[object] = [0, b""]


def date_field() -> bytes:
    """``Date: <now, local time>`` (no CRLF), formatted once per second."""
    now = int(time.time())
    if _date[0] != now:
        _date[:] = [now, b"Date: " + email.utils.formatdate(now, localtime=True).encode()]
    return _date[1]  # type: ignore[return-value]


def message_id_field(msg_id: str, hostname: str) -> bytes:
    """``Message-ID: <queue-id@hostname>`` (no CRLF): unique because the queue id is."""
    return f"Message-ID: <{msg_id}@{hostname}>".encode()


def missing_fields(message: bytes, msg_id: str, hostname: str) -> bytes:
    """The Date: and Message-ID: lines (each with CRLF) that ``message`` lacks, else b"".

    Only the header block (up to the first empty line) is looked at, and at most its first
    ``MAX_HEAD`` octets: a body with no empty line is not scanned whole."""
    end = -2 if message.startswith(b"\r\n") else message.find(b"\r\n\r\n", 0, MAX_HEAD)  # -2: no header
    head = message[: end + 2] if end != -1 else message[:MAX_HEAD]
    present = {m.group(1).lower() for m in _NAMES_RE.finditer(b"\n" + head)}
    out = b""
    if b"date" not in present:
        out += date_field() + b"\r\n"
    if b"message-id" not in present:
        out += message_id_field(msg_id, hostname) + b"\r\n"
    return out
