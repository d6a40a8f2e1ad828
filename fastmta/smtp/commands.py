# SPDX-License-Identifier: MIT
"""Pure parsing and formatting of SMTP command arguments (RFC 5321 §4.1.2, §4.1.4).

``parse_path`` turns the argument of ``MAIL FROM:`` / ``RCPT TO:`` into an address
and its ESMTP parameters; ``format_path`` is its inverse (``parse ∘ format = id``),
which the delivery client reuses. Nothing here does I/O or looks at policy; a bad
argument raises ``ArgError`` naming the catalogue reply to send.
"""

from __future__ import annotations

import re

from fastmta.smtp import replies as R

# RFC 5321 §4.1.2 atext, plus UTF-8 (RFC 6531) which is checked separately.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\x80-\U0010ffff]+"
_DOT_STRING = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\x80-\U0010ffff]|\\[\x20-\x7e])*"')
_LABEL = r"[A-Za-z0-9\x80-\U0010ffff](?:[A-Za-z0-9\-\x80-\U0010ffff]*[A-Za-z0-9\x80-\U0010ffff])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_LITERAL = re.compile(r"\[(?:[0-9.]+|IPv6:[0-9A-Fa-f:.]+|[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+)\]")
_SOURCE_ROUTE = re.compile(r"^@[^:,]+(?:,@[^:,]+)*:")
_XTEXT = re.compile(r"^(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*$")
_KEYWORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")

# The everyday address (ASCII dot-atom @ LDH labels): a strict subset of what the
# full check accepts, matched by one regex so the common case costs one call.
_COMMON = re.compile(
    r"([A-Za-z0-9_+=-]+(?:\.[A-Za-z0-9_+=-]+)*)@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
)

MAX_LOCAL = 64  # RFC 5321 §4.5.3.1.1
MAX_DOMAIN = 255  # §4.5.3.1.2
MAX_PATH = 256  # §4.5.3.1.3


class ArgError(ValueError):
    """A command argument that cannot be accepted; ``reply`` is the catalogue bytes to send."""

    def __init__(self, reply: bytes) -> None:
        super().__init__(reply.decode("ascii", "replace").strip())
        self.reply = reply


def split_path(arg: str) -> tuple[str, str]:
    """``<a@b> SIZE=10`` → (``a@b``, ``SIZE=10``). Tolerates a space after the colon
    and a bare address without brackets (as Postfix does by default)."""
    arg = arg.lstrip(" ")
    if arg.startswith("<") and '"' not in arg:
        end = arg.find(">")
        if end < 0:
            raise ArgError(R.R_501_BAD_ADDRESS)
        return arg[1:end], arg[end + 1 :].strip(" ")
    if arg.startswith("<"):
        # a quoted local part may contain ">"; find the closing bracket outside quotes
        i, quoted, n = 1, False, len(arg)
        while i < n:
            c = arg[i]
            if c == "\\" and quoted:
                i += 2
                continue
            if c == '"':
                quoted = not quoted
            elif c == ">" and not quoted:
                return arg[1:i], arg[i + 1 :].strip(" ")
            i += 1
        raise ArgError(R.R_501_BAD_ADDRESS)
    addr, _, rest = arg.partition(" ")
    return addr, rest.strip(" ")


def check_mailbox(addr: str, utf8: bool, allow_bare_postmaster: bool = False) -> str:
    """Validate ``local@domain`` (source route already removed); return it unchanged."""
    m = _COMMON.fullmatch(addr)
    if m is not None and m.end(1) <= MAX_LOCAL and len(addr) <= MAX_PATH:
        return addr
    if not utf8 and not addr.isascii():
        raise ArgError(R.R_553_NEED_SMTPUTF8)
    if len(addr.encode()) > MAX_PATH:
        raise ArgError(R.R_501_BAD_ADDRESS)
    if allow_bare_postmaster and addr.lower() == "postmaster":
        return addr
    at = addr.rfind("@")
    if at <= 0:
        raise ArgError(R.R_501_BAD_ADDRESS)
    local, domain = addr[:at], addr[at + 1 :]
    if len(local.encode()) > MAX_LOCAL or len(domain.encode()) > MAX_DOMAIN:
        raise ArgError(R.R_501_BAD_ADDRESS)
    if not (_DOT_STRING.fullmatch(local) or _QUOTED.fullmatch(local)):
        raise ArgError(R.R_501_BAD_ADDRESS)
    if not (_DOMAIN.fullmatch(domain) or _LITERAL.fullmatch(domain)):
        raise ArgError(R.R_501_BAD_ADDRESS)
    return addr


def strip_source_route(addr: str) -> str:
    """RFC 5321 §4.1.1.3 / appendix C: ``@a,@b:user@c`` → ``user@c`` (routes are ignored)."""
    if not addr.startswith("@"):
        return addr
    m = _SOURCE_ROUTE.match(addr)
    return addr[m.end() :] if m else addr


def parse_params(text: str) -> dict[str, str]:
    """``SIZE=10 BODY=8BITMIME SMTPUTF8`` → {"SIZE": "10", "BODY": "8BITMIME", "SMTPUTF8": ""}."""
    params: dict[str, str] = {}
    for item in text.split(" "):
        if not item:
            continue
        key, _, value = item.partition("=")
        key = key.upper()
        if not _KEYWORD.match(key) or key in params or ("=" in item and not value):
            raise ArgError(R.R_555_BAD_PARAM)
        params[key] = value
    return params


def xtext_decode(value: str) -> str:
    """RFC 3461 §4: ``+HH`` escapes; anything else outside xchar is malformed."""
    if not _XTEXT.match(value):
        raise ArgError(R.R_555_BAD_PARAM)
    if "+" not in value:
        return value
    return re.sub(r"\+([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), value)


def xtext_encode(value: str) -> str:
    return "".join(c if 0x21 <= ord(c) <= 0x7E and c not in "+=" else f"+{ord(c):02X}" for c in value)


# MAIL parameters whose value is one of a few keywords (RFC 6152, RFC 3461 §4.3).
_MAIL_CHOICES = {"BODY": ("7BIT", "8BITMIME"), "RET": ("FULL", "HDRS")}


def parse_mail(arg: str, max_size: int, esmtp: bool = True) -> tuple[str, dict[str, str]]:
    """``MAIL FROM:`` argument → (sender, params). ``<>`` is the null sender.

    Params kept: BODY, SMTPUTF8, REQUIRETLS, RET, ENVID (xtext decoded); SIZE is checked against
    ``max_size``, AUTH (RFC 4954) accepted and dropped. Unknown ones, or any after
    HELO instead of EHLO (``esmtp=False``, RFC 5321 §4.1.1.11) → 555 5.5.4.
    """
    addr, rest = split_path(arg)
    if rest and not esmtp:
        raise ArgError(R.R_555_BAD_PARAM)
    params = parse_params(rest) if rest else {}
    utf8 = "SMTPUTF8" in params
    for key, value in params.items():
        if key == "SIZE":
            if not value.isdigit() or len(value) > 20:
                raise ArgError(R.R_555_BAD_PARAM)
            if int(value) > max_size:
                raise ArgError(R.R_552_TOO_BIG)
        elif key in _MAIL_CHOICES:
            if value.upper() not in _MAIL_CHOICES[key]:
                raise ArgError(R.R_555_BAD_PARAM)
            params[key] = value.upper()
        elif key in ("SMTPUTF8", "REQUIRETLS"):
            if value:
                raise ArgError(R.R_555_BAD_PARAM)
        elif key == "ENVID":
            params[key] = xtext_decode(value)
            if len(params[key]) > 100:  # RFC 3461 §4.4
                raise ArgError(R.R_555_BAD_PARAM)
        elif key == "AUTH":
            continue
        else:
            raise ArgError(R.R_555_BAD_PARAM)
    params.pop("AUTH", None)
    params.pop("SIZE", None)  # checked above; the spool records the real size
    if addr == "":
        return "", params
    try:
        sender = check_mailbox(strip_source_route(addr), utf8)
    except ArgError as e:
        raise ArgError(R.R_501_BAD_SENDER if e.reply is R.R_501_BAD_ADDRESS else e.reply) from None
    return sender, params


_NOTIFY_WORDS = {"SUCCESS", "FAILURE", "DELAY"}


def parse_rcpt(arg: str, utf8: bool) -> tuple[str, str, str]:
    """``RCPT TO:`` argument → (address, notify, orcpt). ``notify`` is "" or e.g.
    ``"SUCCESS,FAILURE"`` / ``"NEVER"``; ``orcpt`` is "" or ``"rfc822;addr"`` decoded."""
    addr, rest = split_path(arg)
    params = parse_params(rest) if rest else {}
    notify = orcpt = ""
    for key, value in params.items():
        if key == "NOTIFY":
            words = value.upper().split(",")
            if words != ["NEVER"] and not (set(words) <= _NOTIFY_WORDS and len(set(words)) == len(words)):
                raise ArgError(R.R_555_BAD_PARAM)
            notify = ",".join(words)
        elif key == "ORCPT":
            addr_type, sep, xtext = value.partition(";")
            if not sep or not _KEYWORD.match(addr_type) or not xtext:
                raise ArgError(R.R_555_BAD_PARAM)
            orcpt = f"{addr_type.lower()};{xtext_decode(xtext)}"
        else:
            raise ArgError(R.R_555_BAD_PARAM)
    if addr == "":
        raise ArgError(R.R_501_BAD_ADDRESS)
    return check_mailbox(strip_source_route(addr), utf8, allow_bare_postmaster=True), notify, orcpt


def format_path(addr: str, params: dict[str, str] | None = None) -> str:
    """Inverse of ``split_path`` + ``parse_params``: ``<addr> K=V K``."""
    out = f"<{addr}>"
    for key, value in (params or {}).items():
        out += f" {key}={value}" if value else f" {key}"
    return out


def domain_of(addr: str) -> str:
    """The lower-cased domain of an address ("" for the null sender / bare postmaster)."""
    at = addr.rfind("@")
    return addr[at + 1 :].lower().rstrip(".") if at >= 0 else ""
