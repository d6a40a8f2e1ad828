# SPDX-License-Identifier: MIT
"""RFC 3464 delivery status notifications, built with the stdlib ``email`` package.

Pure: the caller gives the envelope facts, the per-recipient reports and the
original message bytes (or just its headers) and gets the DSN's bytes back, CRLF
line ends, ready for ``spool.put`` with the null sender ``<>``. Deciding *whether*
a DSN is due (``<>`` senders, NOTIFY=) is :func:`wanted`; this module never
touches the spool, the clock or the network.
"""

from __future__ import annotations

import email.policy
import email.utils
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage, Message, MIMEPart
from typing import Any

from fastmta.errors import Reply

# Never fold into RFC 2047 encoded words: status fields are read by programs.
_POLICY = email.policy.SMTP.clone(max_line_length=998)
_POLICY_UTF8 = _POLICY.clone(utf8=True)  # RFC 6532 headers, for senders/recipients that need SMTPUTF8
MAX_FULL = 1024 * 1024  # RET=FULL returns the whole message up to this size, else headers only
_CTL = re.compile(r"[\x00-\x1f\x7f]+")
_PLACEHOLDER = b"fastmta-dsn-original-7c1d5e0f2a9b4c36"

_SUBJECTS = {
    "failed": "Undelivered Mail Returned to Sender",
    "delayed": "Delayed Mail (still being retried)",
    "delivered": "Successful Mail Delivery Report",
    "relayed": "Successful Mail Delivery Report",
}
_INTRO = {
    "failed": "I'm sorry to have to inform you that your message could not\n"
    "be delivered to one or more recipients. It's attached below.",
    "delayed": "Your message could not be delivered yet to one or more recipients.\n"
    "Delivery is being retried; you do not need to resend it.",
    "delivered": "Your message was successfully delivered to the recipients below.",
    "relayed": "Your message was relayed to the recipients below; the next mail\n"
    "system did not offer delivery notifications, so this is the last one.",
}


@dataclass(frozen=True, slots=True)
class RcptReport:
    """What happened to one recipient, as its per-recipient DSN fields say it."""

    rcpt: str
    action: str  # failed | delayed | delivered | relayed
    status: str  # "5.1.1", "4.4.7", "2.0.0"
    reply: Reply | None = None
    orcpt: str = ""  # the ORCPT= parameter, xtext already decoded by the receiver ("rfc822;a@b.test")
    remote_mta: str = ""  # host name (or address) of the next hop that answered
    last_attempt: float | None = None
    will_retry_until: float | None = None


def wanted(sender: str, notify: str, action: str) -> bool:
    """Whether RFC 3461 asks for a DSN of ``action`` for a recipient with NOTIFY=``notify``.

    Never for the null sender (a bounce of a bounce could loop forever). Without
    NOTIFY only failures are reported; NEVER silences everything.
    """
    if not sender:
        return False
    words = {w.strip().upper() for w in notify.split(",") if w.strip()} if notify else set()
    if "NEVER" in words:
        return False
    if action == "failed":
        return not words or "FAILURE" in words
    if action == "delayed":
        return "DELAY" in words
    return "SUCCESS" in words  # delivered, relayed


def needs_utf8(sender: str, reports: Sequence[RcptReport]) -> bool:
    """Whether the DSN carries UTF-8 addresses, so it must travel with SMTPUTF8 (RFC 6533)."""
    return not (sender.isascii() and all(r.rcpt.isascii() and r.orcpt.isascii() for r in reports))


def status_of(reply: Reply) -> str:
    """The DSN Status for a reply: its enhanced code when it agrees with the reply class."""
    enh = reply.enhanced
    cls = str(reply.code // 100)
    if enh and enh[0] == cls and enh.count(".") == 2:
        return enh
    return f"{cls}.0.0"


def diagnostic(reply: Reply) -> str:
    """``smtp; 550 5.1.1 text`` on one line (control characters from the peer removed)."""
    return "smtp; " + _CTL.sub(" ", str(reply)).strip()


def headers_of(message: bytes) -> bytes:
    """The header section of a message (up to, not including, the empty line)."""
    end = message.find(b"\r\n\r\n")
    if end < 0:
        end = message.find(b"\n\n")
    return message if end < 0 else message[: end + 2]


def build(
    reports: Sequence[RcptReport],
    *,
    msg_id: str,
    sender: str,
    arrived: float,
    hostname: str,
    bounce_from: str,
    original: bytes | None,
    ret: str = "",
    envid: str = "",
    now: float,
    max_full: int = MAX_FULL,
) -> bytes:
    """One DSN covering ``reports`` (all of one action) for message ``msg_id``.

    ``original`` is the queued message (headers are enough unless RET=FULL); None
    when it is gone, and then the DSN has no third part.
    """
    action = reports[0].action
    pol = _POLICY_UTF8 if needs_utf8(sender, reports) else _POLICY
    msg = EmailMessage(policy=pol)
    msg["From"] = f"Mail Delivery System <{bounce_from}>"
    msg["To"] = f"<{sender}>"
    msg["Subject"] = _SUBJECTS.get(action, "Delivery Status Notification")
    msg["Date"] = _date(now)
    msg["Message-ID"] = f"<{msg_id}.{action}.{int(now * 1000)}@{hostname}>"
    msg["Auto-Submitted"] = "auto-replied"  # RFC 3834: no vacation replies to bounces
    msg["MIME-Version"] = "1.0"
    msg["Content-Type"] = "multipart/report; report-type=delivery-status"
    parts: list[Message[str, str] | str] = [
        _human(reports, hostname, pol),
        _status(reports, hostname, arrived, envid, pol),
    ]
    returned = b""
    if original is not None:
        full = action == "failed" and ret.upper() == "FULL" and len(original) <= max_full
        returned = original if full else headers_of(original)
        parts.append(_original(returned, full, pol))
    msg.set_payload(parts)
    out = msg.as_bytes()
    # The generator cannot carry 8-bit bytes inside a message/rfc822 part, so the
    # returned message goes in verbatim where its placeholder was.
    return out.replace(_PLACEHOLDER, returned, 1) if returned else out


def _human(reports: Sequence[RcptReport], hostname: str, pol: Any) -> MIMEPart:
    action = reports[0].action
    lines = [f"This is the mail system at host {hostname}.", "", _INTRO.get(action, ""), ""]
    for r in reports:
        why = _CTL.sub(" ", str(r.reply)) if r.reply is not None else r.status
        where = f" (from {r.remote_mta})" if r.remote_mta else ""
        lines.append(f"<{r.rcpt}>: {why}{where}")
    part = MIMEPart(policy=pol)
    part.set_content("\n".join(lines) + "\n", charset="utf-8")
    part["Content-Description"] = "Notification"
    return part


def _status(reports: Sequence[RcptReport], hostname: str, arrived: float, envid: str, pol: Any) -> MIMEPart:
    head = Message(policy=pol)
    head["Reporting-MTA"] = f"dns; {hostname}"
    if envid:
        head["Original-Envelope-Id"] = _CTL.sub(" ", envid)
    head["Arrival-Date"] = _date(arrived)
    blocks: list[Message[str, str] | str] = [head]
    for r in reports:
        b = Message(policy=pol)
        if r.orcpt:
            kind, _, addr = r.orcpt.partition(";")
            b["Original-Recipient"] = f"{kind.strip() or 'rfc822'}; {_CTL.sub(' ', addr.strip())}"
        b["Final-Recipient"] = f"{'rfc822' if r.rcpt.isascii() else 'utf-8'}; {r.rcpt}"
        b["Action"] = r.action
        b["Status"] = r.status
        if r.remote_mta:
            b["Remote-MTA"] = f"dns; {r.remote_mta}"
        if r.reply is not None:
            b["Diagnostic-Code"] = diagnostic(r.reply)
        if r.last_attempt is not None:
            b["Last-Attempt-Date"] = _date(r.last_attempt)
        if r.will_retry_until is not None:
            b["Will-Retry-Until"] = _date(r.will_retry_until)
        blocks.append(b)
    part = MIMEPart(policy=pol)
    part["Content-Type"] = "message/delivery-status"
    part["Content-Description"] = "Delivery report"
    part.set_payload(blocks)
    return part


def _original(returned: bytes, full: bool, pol: Any) -> MIMEPart:
    part = MIMEPart(policy=pol)
    if full:
        part["Content-Type"] = "message/rfc822"
        part["Content-Description"] = "Undelivered Message"
    else:
        part["Content-Type"] = "text/rfc822-headers"
        part["Content-Description"] = "Undelivered Message Headers"
    if not returned.isascii():
        part["Content-Transfer-Encoding"] = "8bit"
    part.set_payload(_PLACEHOLDER.decode())
    return part


def remote_host(nexthop: str) -> str:
    """``mx1.a.test[127.0.0.2]:2525`` → ``mx1.a.test`` (the Remote-MTA name); ``lmtp:[h]:p`` → ``h``.

    "" (no Remote-MTA field) for a Maildir or an LMTP unix socket: RFC 3464 §2.3.5
    asks for the field when mail was relayed over SMTP, and its ``dns`` type names an
    Internet host, which a socket path is not (§2.1.2); the Reporting-MTA already
    names this machine."""
    if nexthop == "maildir" or nexthop.startswith("lmtp:unix:"):
        return ""
    nexthop = nexthop.removeprefix("lmtp:")
    host = nexthop.split("[", 1)[0] if not nexthop.startswith("[") else nexthop[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _date(t: float) -> str:
    """RFC 5322 date in UTC (``+0000``)."""
    return email.utils.format_datetime(datetime.fromtimestamp(t, UTC))
