# SPDX-License-Identifier: MIT
"""``POST /api/v1/inject``: the JSON request checked, and one message built per recipient.

No I/O here: ``parse`` turns a decoded JSON document into an ``Injection`` or raises
``BadRequest`` naming the field (``recipients[3].email``), and
``Injection.message(i, msg_id, hostname)`` builds recipient *i*'s message.

Substitutions fill ``{{ name }}`` placeholders through a Jinja2 sandbox (templates
cannot reach Python objects or attributes beyond the sandbox's rules). Each
template is compiled once per request and rendered per recipient, with the
request's ``substitutions`` overlaid by the recipient's own. Text (subject,
headers, ``text_body``, a whole ``content`` string) is rendered as written;
``html_body`` is rendered with autoescaping on, so a substituted ``<`` or ``&``
shows as text instead of becoming markup. Write ``{{ value|safe }}`` for
trusted HTML.

Built from parts, the MIME structure (multipart/alternative, attachments in
base64) is composed once with the stdlib ``email`` package, with a marker where
each text part goes; per recipient only the rendered texts are spliced into those
places (``7bit`` when they are plain ASCII, else quoted-printable, see
``text_part``) and the per-recipient header fields put in front, so a
1,000-recipient request composes MIME once, not 1,000 times.
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import email.utils
import functools
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.header import Header
from email.message import EmailMessage
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import escape

from fastmta.inject.compose import to_crlf
from fastmta.smtp.commands import ArgError, check_mailbox
from fastmta.smtp.headers import date_field, message_id_field, missing_fields

_TEXT = SandboxedEnvironment(autoescape=False)
_HTML = SandboxedEnvironment(autoescape=True)
_HEADER_NAME = re.compile(r"[!-9;-~]{1,76}")
_SIMPLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_SLOT = b"@@FASTMTA-SLOT-%d@@"
_SLOT_RE = re.compile(rb"@@FASTMTA-SLOT-(\d+)@@\r?\n?")
_CTE = b"Content-Transfer-Encoding: "
_CTE_QP = _CTE + b"quoted-printable"
MAX_7BIT_LINE = 998  # octets of a line without its CRLF (RFC 5322 section 2.1.1)
# Fields the API sets itself; a "headers" entry may not set them a second time.
_OWN_FIELDS = frozenset(
    {"from", "to", "subject", "mime-version", "content-type", "content-transfer-encoding"}
)
MAX_HEADERS = 100
MAX_ATTACHMENTS = 100
MAX_NAME = 200


class BadRequest(ValueError):
    """A ``400``: ``field`` is the JSON path of what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class RenderError(ValueError):
    """One recipient's message cannot be built (a template failed for its substitutions)."""


Render = Callable[[Mapping[str, Any]], str]


def _template(env: SandboxedEnvironment, text: str, where: str) -> Render:
    """``text`` as a template, compiled once; BadRequest naming ``where`` if it does not parse."""
    try:
        return _compile(env.autoescape is True, text)
    except jinja2.TemplateError as e:
        raise BadRequest(where, f"template error: {e}") from None


@functools.lru_cache(maxsize=512)
def _compile(html: bool, text: str) -> Render:
    """A render function for ``text``; cached, as an application sends its templates again and again.

    Jinja2 takes milliseconds to compile a template and ~40 µs per render to set up
    its context, so a text without ``{{``/``{%``/``{#`` is returned as is, and one
    made only of plain ``{{ name }}`` placeholders is filled by a join, with Jinja's
    meaning (a missing name is empty, a value shown with ``str``, escaped in HTML);
    anything else (filters, expressions, blocks) is compiled in the sandbox.
    """
    if "{" not in text:
        return lambda _subs: text
    pieces = _SIMPLE.split(text)
    literals, names = pieces[0::2], pieces[1::2]
    if any("{{" in p or "{%" in p or "{#" in p for p in literals):
        return (_HTML if html else _TEXT).from_string(text).render
    show: Callable[[Any], str] = (lambda v: str(escape(v))) if html else str
    unique = tuple(dict.fromkeys(names))
    base = [x for lit in literals for x in (lit, "")][:-1]  # a value goes into every odd index

    def value(subs: Mapping[str, Any], name: str) -> str:
        v = subs.get(name)
        return "" if v is None and name not in subs else show(v)

    if len(unique) == 1:  # one name, however often: a single join
        return lambda subs: value(subs, unique[0]).join(literals)

    def fill(subs: Mapping[str, Any]) -> str:
        shown = {name: value(subs, name) for name in unique}
        out = base.copy()
        for i, name in enumerate(names):
            out[2 * i + 1] = shown[name]
        return "".join(out)

    return fill


def _obj(doc: Any, where: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise BadRequest(where, "expected an object")
    return doc


def _string(doc: Mapping[str, Any], key: str, where: str, required: bool = False, default: str = "") -> str:
    if key not in doc:
        if required:
            raise BadRequest(f"{where}{key}", "required")
        return default
    value = doc[key]
    if not isinstance(value, str):
        raise BadRequest(f"{where}{key}", "expected a string")
    return value


def _address(value: str, where: str, allow_empty: bool = False) -> str:
    if value == "" and allow_empty:
        return ""
    if len(value) > 254 * 4:
        raise BadRequest(where, "address too long")
    try:
        return check_mailbox(value, utf8=True)
    except ArgError:
        raise BadRequest(where, f"bad address {value[:100]!r}") from None


def _unknown(doc: Mapping[str, Any], known: frozenset[str], where: str) -> None:
    for key in doc:
        if key not in known:
            raise BadRequest(f"{where}{key or chr(34) * 2}", "unknown field")  # "" names an empty key


def _substitutions(doc: Mapping[str, Any], where: str) -> dict[str, Any]:
    subs = doc.get("substitutions", {})
    if not isinstance(subs, dict):
        raise BadRequest(f"{where}substitutions", "expected an object")
    return subs


def _one_line(text: str, where: str) -> str:
    if "\r" in text or "\n" in text or "\x00" in text:
        raise BadRequest(where, "must be one line (no CR, LF or NUL)")
    return text


def header_line(name: str, value: str) -> bytes:
    """``Name: value`` with CRLF; RFC 2047 encoded (and folded) unless it is short ASCII.
    A line end in a substituted value becomes a space: no value can add a field."""
    if "\r" in value or "\n" in value:
        value = value.replace("\r", " ").replace("\n", " ")
    if value.isascii() and len(value) + len(name) < 900:
        return f"{name}: {value}\r\n".encode("ascii")
    return f"{name}: {Header(value, 'utf-8', header_name=name).encode(linesep=chr(13) + chr(10))}\r\n".encode(
        "ascii"
    )


@dataclass(slots=True)
class Recipient:
    email: str
    name: str
    substitutions: dict[str, Any]


@dataclass
class Injection:
    """A checked request: envelope, recipients and the compiled message."""

    sender: str
    recipients: list[Recipient]
    substitutions: dict[str, Any]
    build: Callable[[Recipient, dict[str, Any], str, str], bytes] = field(repr=False)
    eight_bit: bool = False  # the body may hold 8-bit text (a raw content string)
    tenant: str | None = None  # None: the token's name
    pool: str = ""  # "" = by sender domain, else the default pool

    def message(self, i: int, msg_id: str, hostname: str) -> bytes:
        """Recipient ``i``'s message (CRLF, with Date: and Message-ID:); RenderError."""
        rcpt = self.recipients[i]
        subs = {**self.substitutions, **rcpt.substitutions} if rcpt.substitutions else self.substitutions
        try:
            return self.build(rcpt, subs, msg_id, hostname)
        except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError, LookupError) as e:
            raise RenderError(f"template failed for this recipient: {type(e).__name__}: {e}"[:300]) from None


def parse(doc: Any, max_recipients: int) -> Injection:
    """Check a decoded JSON request (see the module docstring); BadRequest names the field."""
    doc = _obj(doc, "body")
    _unknown(
        doc, frozenset({"envelope_sender", "recipients", "content", "substitutions", "tenant", "pool"}), ""
    )
    sender = _address(_string(doc, "envelope_sender", "", required=True), "envelope_sender", allow_empty=True)
    raw = doc.get("recipients")
    if not isinstance(raw, list) or not raw:
        raise BadRequest("recipients", "expected a non-empty list")
    if len(raw) > max_recipients:
        raise BadRequest("recipients", f"more than {max_recipients} recipients in one request")
    rcpts = [_plain_recipient(item) or _recipient(i, item) for i, item in enumerate(raw)]
    subs = _substitutions(doc, "")
    if "content" not in doc:
        raise BadRequest("content", "required")
    content = doc["content"]
    if isinstance(content, str):
        inj = Injection(sender, rcpts, subs, _raw_builder(content), eight_bit=not content.isascii())
    else:
        inj = Injection(sender, rcpts, subs, _parts_builder(_obj(content, "content")))
    if "tenant" in doc:
        inj.tenant = _label(_string(doc, "tenant", ""), "tenant")
    if "pool" in doc:
        inj.pool = _label(_string(doc, "pool", ""), "pool")
    return inj


_RCPT_KEYS = frozenset({"email", "name", "substitutions"})
_NO_SUBS: dict[str, Any] = {}


def _plain_recipient(item: Any) -> Recipient | None:
    """A well-formed recipient checked without building its field paths (a 1,000-recipient
    request checks 1,000 of them); None sends it to ``_recipient``, which names the error."""
    if type(item) is not dict or not item.keys() <= _RCPT_KEYS:
        return None
    addr, name, subs = item.get("email"), item.get("name", ""), item.get("substitutions", _NO_SUBS)
    if type(addr) is not str or type(name) is not str or type(subs) is not dict:
        return None
    if "\r" in name or "\n" in name or "\x00" in name or len(addr) > 254 * 4:
        return None
    try:
        check_mailbox(addr, utf8=True)
    except ArgError:
        return None
    return Recipient(addr, name[:MAX_NAME], subs)


def _recipient(i: int, item: Any) -> Recipient:
    where = f"recipients[{i}]."
    item = _obj(item, f"recipients[{i}]")
    _unknown(item, _RCPT_KEYS, where)
    addr = _address(_string(item, "email", where, required=True), f"{where}email")
    name = _one_line(_string(item, "name", where), f"{where}name")[:MAX_NAME]
    return Recipient(addr, name, _substitutions(item, where))


def label_ok(value: str) -> bool:
    """A tenant or pool name: 1–64 printable ASCII characters (as the X-Fastmta- headers take)."""
    return 0 < len(value) <= 64 and value.isascii() and value.isprintable() and " " not in value


def _label(value: str, where: str) -> str:
    if not label_ok(value):
        raise BadRequest(where, "expected 1 to 64 printable ASCII characters without spaces")
    return value


def _raw_builder(content: str) -> Callable[[Recipient, dict[str, Any], str, str], bytes]:
    if not content.strip():
        raise BadRequest("content", "empty message")
    render = _template(_TEXT, content, "content")

    def build(_rcpt: Recipient, subs: dict[str, Any], msg_id: str, hostname: str) -> bytes:
        data = to_crlf(render(subs).encode("utf-8", "surrogateescape"))
        if b"\r\n\r\n" not in data and not data.startswith(b"\r\n"):
            data += b"\r\n" if data.endswith(b"\r\n") else b"\r\n\r\n"
        return missing_fields(b"\r\n" + data, msg_id, hostname) + data

    return build


@dataclass(slots=True)
class _Part:
    render: Render
    slot: int


def _parts_builder(c: dict[str, Any]) -> Callable[[Recipient, dict[str, Any], str, str], bytes]:
    where = "content."
    _unknown(c, frozenset({"from", "subject", "text_body", "html_body", "headers", "attachments",
                           "reply_to"}), where)  # fmt: skip
    sender = c.get("from")
    if isinstance(sender, str):
        sender = {"email": sender}
    sender = _obj(sender, "content.from")
    _unknown(sender, frozenset({"email", "name"}), "content.from.")
    from_addr = _address(_string(sender, "email", "content.from.", required=True), "content.from.email")
    from_name = _one_line(_string(sender, "name", "content.from."), "content.from.name")[:MAX_NAME]
    subject = _template(_TEXT, _one_line(_string(c, "subject", where), "content.subject"), "content.subject")
    text = _string(c, "text_body", where)
    html = _string(c, "html_body", where)
    if not text and not html:
        raise BadRequest("content.text_body", "text_body or html_body is required")
    reply_to = _string(c, "reply_to", where)
    if reply_to:
        _address(reply_to, "content.reply_to")
    headers = c.get("headers", {})
    if not isinstance(headers, dict):
        raise BadRequest("content.headers", "expected an object")
    if len(headers) > MAX_HEADERS:
        raise BadRequest("content.headers", f"more than {MAX_HEADERS} fields")
    extra: list[tuple[str, Render]] = []
    for name, value in headers.items():
        hw = f"content.headers.{name}"
        if not _HEADER_NAME.fullmatch(name):
            raise BadRequest(hw, "not a header field name")
        if name.lower() in _OWN_FIELDS:
            raise BadRequest(hw, "set by the API (use from, subject, text_body or html_body)")
        if not isinstance(value, str):
            raise BadRequest(hw, "expected a string")
        extra.append((name, _template(_TEXT, _one_line(value, hw), hw)))
    has_date = any(n.lower() == "date" for n, _ in extra)
    has_msgid = any(n.lower() == "message-id" for n, _ in extra)

    msg = EmailMessage()
    msg["From"] = email.utils.formataddr((from_name, from_addr), charset="utf-8")
    if reply_to:
        msg["Reply-To"] = reply_to
    parts: list[_Part] = []
    if text:
        parts.append(_Part(_template(_TEXT, text, "content.text_body"), len(parts)))
        msg.set_content((_SLOT % 0).decode() + "\n", charset="utf-8", cte="quoted-printable")
    if html:
        slot = len(parts)
        parts.append(_Part(_template(_HTML, html, "content.html_body"), slot))
        body = (_SLOT % slot).decode() + "\n"
        if text:
            msg.add_alternative(body, subtype="html", charset="utf-8", cte="quoted-printable")
        else:
            msg.set_content(body, subtype="html", charset="utf-8", cte="quoted-printable")
    _attach(msg, c.get("attachments", []))
    skeleton = msg.as_bytes(policy=email.policy.SMTPUTF8 if not from_addr.isascii() else email.policy.SMTP)
    holds_boundary = boundary_finder(tuple(b for p in msg.walk() if (b := p.get_boundary()) is not None))
    pieces = _SLOT_RE.split(skeleton)  # literal, slot number, literal, ...
    slots = [int(s) for s in pieces[1::2]]
    # each text part's header ends "Content-Transfer-Encoding: quoted-printable\r\n...": the
    # literal before it is cut there, and the encoding chosen per recipient goes in between
    heads = [(lit, lit.rindex(_CTE_QP)) for lit in pieces[0:-1:2]]
    before = [lit[: i + len(_CTE)] for lit, i in heads]
    after = [lit[i + len(_CTE_QP) :] for lit, i in heads]
    last = pieces[-1]

    def build(rcpt: Recipient, subs: dict[str, Any], msg_id: str, hostname: str) -> bytes:
        to = email.utils.formataddr((rcpt.name, rcpt.email), charset="utf-8") if rcpt.name else rcpt.email
        out = [header_line("To", to), header_line("Subject", subject(subs))]
        out += [header_line(n, r(subs)) for n, r in extra]
        if not has_date:
            out.append(date_field() + b"\r\n")
        if not has_msgid:
            out.append(message_id_field(msg_id, hostname) + b"\r\n")
        for k, n in enumerate(slots):
            cte, body = text_part(parts[n].render(subs), holds_boundary)
            out += (before[k], cte, after[k], body)
        out.append(last)
        return b"".join(out)

    return build


def text_part(text: str, holds_boundary: Callable[[str], bool] = lambda _text: False) -> tuple[bytes, bytes]:
    """(transfer encoding, body in CRLF lines ending in CRLF) of one rendered text part.

    ASCII text whose lines fit in 998 octets and that holds no NUL and none of the
    message's MIME boundaries (``holds_boundary``) goes as ``7bit``, as it is: most mail does, and it
    costs a few scans where quoted-printable costs a pass per byte. Anything else is
    quoted-printable (which also keeps a boundary out: it encodes every ``=``).
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text.isascii() and "\x00" not in text and _lines_fit(text) and not holds_boundary(text):
        data = text.encode("ascii").replace(b"\n", b"\r\n")
        return b"7bit", data if data.endswith(b"\r\n") else data + b"\r\n"
    qp = binascii.b2a_qp(text.encode("utf-8", "surrogateescape"), istext=True).replace(b"\n", b"\r\n")
    return b"quoted-printable", qp if qp.endswith(b"\r\n") else qp + b"\r\n"


def _lines_fit(text: str, limit: int = MAX_7BIT_LINE) -> bool:
    """No line of ``text`` (LF line ends) is longer than ``limit``: one search per ``limit``
    characters, jumping to the last line end inside each window."""
    pos, end = 0, len(text)
    while end - pos > limit:
        nl = text.rfind("\n", pos, pos + limit + 1)
        if nl < 0:
            return False
        pos = nl + 1
    return True


def boundary_finder(boundaries: tuple[str, ...]) -> Callable[[str], bool]:
    """A test for "does this text hold one of ``boundaries``": their common start is
    looked for first (the email package starts each with 15 ``=``), one short search
    in the usual case."""
    if not boundaries:
        return lambda _text: False
    common = os.path.commonprefix(boundaries)
    return lambda text: common in text and any(b in text for b in boundaries)


def _attach(msg: EmailMessage, items: Any) -> None:
    if not isinstance(items, list):
        raise BadRequest("content.attachments", "expected a list")
    if len(items) > MAX_ATTACHMENTS:
        raise BadRequest("content.attachments", f"more than {MAX_ATTACHMENTS} attachments")
    for i, item in enumerate(items):
        where = f"content.attachments[{i}]."
        item = _obj(item, f"content.attachments[{i}]")
        _unknown(item, frozenset({"file_name", "content_type", "base64"}), where)
        name = _one_line(_string(item, "file_name", where, required=True), f"{where}file_name")[:MAX_NAME]
        ctype = _string(item, "content_type", where, default="application/octet-stream")
        maintype, sep, subtype = ctype.partition("/")
        if (
            not sep
            or not re.fullmatch(r"[A-Za-z0-9!#$&^_.+-]{1,64}", maintype)
            or not re.fullmatch(r"[A-Za-z0-9!#$&^_.+-]{1,64}", subtype)
        ):
            raise BadRequest(f"{where}content_type", "expected a MIME type such as application/pdf")
        try:
            data = base64.b64decode(_string(item, "base64", where, required=True), validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"{where}base64", "not valid base64") from None
        msg.add_attachment(data, maintype=maintype.lower(), subtype=subtype.lower(), filename=name)
