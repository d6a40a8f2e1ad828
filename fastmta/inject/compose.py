# SPDX-License-Identifier: MIT
"""Header fix-ups for mail injected locally (the job Postfix's cleanup does for sendmail).

Works on bytes so a message passes through unchanged apart from what it must
gain or lose: line ends become CRLF, ``Bcc:`` is removed, and missing ``From:``,
``Date:`` and ``Message-ID:`` are added with a ``Received:`` trace line. Header
values are only decoded to read recipient lists. No I/O here.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass

from fastmta.smtp.commands import ArgError, check_mailbox
from fastmta.smtp.headers import date_field, message_id_field

_FIELD_RE = re.compile(rb"^[\x21-\x39\x3b-\x7e]+[ \t]*:")
_RECIPIENT_FIELDS = (b"to", b"cc", b"bcc")
_RESENT_FIELDS = (b"resent-to", b"resent-cc", b"resent-bcc")
_HIDDEN_FIELDS = (b"bcc", b"resent-bcc")


class MessageError(ValueError):
    """The message cannot be accepted as given (sendmail's EX_DATAERR)."""


class AddressError(ValueError):
    """A recipient or sender address is malformed (sendmail's EX_NOUSER)."""


def to_crlf(data: bytes) -> bytes:
    """LF, CRLF or bare CR line ends → CRLF (the spool and the wire hold CRLF only)."""
    if b"\r" not in data:  # LF only: one pass instead of three
        return data.replace(b"\n", b"\r\n")
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


@dataclass(slots=True)
class Message:
    """A message split into header fields (each with its folded lines, no final CRLF) and body."""

    fields: list[bytes]
    body: bytes

    @classmethod
    def parse(cls, data: bytes, strict: bool = True) -> Message:
        """Split CRLF ``data``. The header ends at the empty line, or at the first line that
        is not a field (that line starts the body, as in Postfix). A leading mbox
        ``From `` line is dropped. NUL in the header → MessageError when ``strict``
        (an SMTP peer's message is taken as the listener takes it: not strict)."""
        lines = data.split(b"\r\n")
        if lines and lines[0].startswith(b"From "):
            lines.pop(0)
        fields: list[bytes] = []
        n = 0
        for n, line in enumerate(lines):  # noqa: B007 (n is the body start)
            if line[:1] in (b" ", b"\t") and fields:
                fields[-1] += b"\r\n" + line
            elif _FIELD_RE.match(line):
                fields.append(line)
            else:
                break
        else:
            n = len(lines)
        if strict and any(b"\x00" in f for f in fields):
            raise MessageError("NUL byte in the message header")
        rest = lines[n:]
        if rest and rest[0] == b"":
            rest.pop(0)
        return cls(fields, b"\r\n".join(rest))

    def has(self, name: bytes) -> bool:
        return any(_name(f) == name for f in self.fields)

    def values(self, names: tuple[bytes, ...]) -> list[str]:
        """Unfolded, decoded values of every field named in ``names`` (lower-case)."""
        out = []
        for f in self.fields:
            if _name(f) in names:
                value = f.split(b":", 1)[1].replace(b"\r\n", b"")
                out.append(value.decode("utf-8", "surrogateescape").strip())
        return out

    def remove(self, names: tuple[bytes, ...]) -> None:
        self.fields = [f for f in self.fields if _name(f) not in names]

    def recipients(self) -> list[str]:
        """Addresses for ``sendmail -t``: the Resent- set when present (RFC 5322 §3.6.6), else To/Cc/Bcc."""
        values = self.values(_RESENT_FIELDS) or self.values(_RECIPIENT_FIELDS)
        return [addr for value in values for addr in split_addresses(value)]

    def hide_bcc(self) -> None:
        self.remove(_HIDDEN_FIELDS)

    def to_bytes(self) -> bytes:
        head = b"".join(f + b"\r\n" for f in self.fields)
        return head + b"\r\n" + self.body


def _name(field: bytes) -> bytes:
    return field.split(b":", 1)[0].rstrip(b" \t").lower()


def _split_outside_quotes(text: str) -> list[str]:
    """Split an address list at commas that are not inside quotes, <…> or (comments), dropping
    the comments."""
    items, cur, quoted, angle, depth = [], [], False, False, 0
    i = 0
    while i < len(text):
        c = text[i]
        if quoted:
            if c == "\\" and i + 1 < len(text):
                cur.append(c + text[i + 1])
                i += 2
                continue
            quoted = c != '"'
        elif depth:
            depth += {"(": 1, ")": -1}.get(c, 0)
            i += 1
            continue
        elif c == '"':
            quoted = True
        elif c == "(":
            depth = 1
            i += 1
            continue
        elif c in "<>":
            angle = c == "<"
        elif c == "," and not angle:
            items.append("".join(cur))
            cur = []
            i += 1
            continue
        cur.append(c)
        i += 1
    items.append("".join(cur))
    return items


def split_addresses(text: str) -> list[str]:
    """The addresses in an RFC 5322 address list (``a@x, Name <b@y>, Group: c@z;``), unvalidated.

    Strict on purpose: unlike ``email.utils.getaddresses`` nothing is silently
    dropped, so ``bad address`` stays whole and fails the syntax check later.
    """
    out = []
    for item in _split_outside_quotes(text):
        item = item.strip()
        if item.endswith(";"):  # the end of a group
            item = item[:-1].rstrip()
        lt, colon, at = item.rfind("<"), item.find(":"), item.find("@")
        if lt >= 0 and item.endswith(">"):
            item = item[lt + 1 : -1].strip()
        elif colon >= 0 and not item.startswith('"') and (at < 0 or colon < at):
            item = item[colon + 1 :].strip()  # "Group: first@x"
        if item:
            out.append(item)
    return out


def qualify(addr: str, hostname: str) -> str:
    """A bare local part gets ``@hostname`` (Postfix's ``myorigin``); then the syntax is checked."""
    addr = addr.strip()
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1]
    if "@" not in addr and addr:
        addr = f"{addr}@{hostname}"
    try:
        return check_mailbox(addr, utf8=True)
    except ArgError:
        raise AddressError(f"bad address syntax: {addr!r}") from None


def parse_recipients(items: list[str], hostname: str) -> list[str]:
    """Command-line recipients (each may be a comma list, with display names) → addresses."""
    out: list[str] = []
    for item in items:
        addrs = split_addresses(item)
        if not addrs:
            raise AddressError(f"bad address syntax: {item!r}")
        out.extend(qualify(addr, hostname) for addr in addrs)
    return out


def add_missing(msg: Message, *, hostname: str, sender: str, full_name: str, msg_id: str, uid: int) -> None:
    """Prepend ``Received:``; add ``From:``, ``Date:``, ``Message-ID:`` when absent (RFC 5322 §3.6)."""
    date = email.utils.formatdate(localtime=True)
    extra = []
    if not msg.has(b"from"):
        extra.append(
            b"From: " + email.utils.formataddr((full_name, sender)).encode("utf-8", "surrogateescape")
        )
    if not msg.has(b"date"):
        extra.append(date_field())
    if not msg.has(b"message-id"):
        extra.append(message_id_field(msg_id, hostname))
    received = f"Received: by {hostname} (fastmta sendmail, from userid {uid})\r\n\tid {msg_id}; {date}"
    msg.fields = [received.encode(), *msg.fields, *extra]
