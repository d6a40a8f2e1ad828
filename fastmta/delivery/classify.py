# SPDX-License-Identifier: MIT
"""Bounce classes: what kind of failure a next hop's reply describes.

A class is a small fixed word (a metric label and a delivery-log field). The reply
code decides first what a class may be: a 4xx is temporary, so it never gets a
permanent class (``invalid_recipient``, ``bad_domain``), whatever its text or
enhanced code says; a greylisting "450 4.2.0 Recipient address rejected:
Greylisted" is not a bad address. Then come text patterns for wording that large
receivers use against the RFC 3463 meaning (Yahoo ``TSS04``, Microsoft's
``5.4.1 Recipient address rejected: Access denied`` and ``5.1.10
RecipientNotFound``), then the enhanced code, then generic wording. Every pattern
names a whole phrase, so a rule fires on what it is about and not on a shared
prefix such as "Recipient address rejected:".
"""

from __future__ import annotations

import re

from fastmta.errors import Bounced, Deferred, Reply

CLASSES = (
    "invalid_recipient", "bad_domain", "mailbox_full", "policy", "rate_limited",
    "tls", "dns", "timeout", "connection", "loop", "other",
)  # fmt: skip
# What a permanent class means when the reply is temporary (4xx): "try again", never "gone".
_TEMPORARY = {"invalid_recipient": "other", "bad_domain": "dns"}

# Text patterns tried before the enhanced code, in order (first match wins).
_FIRST = [
    ("policy", r"\bgrey-?listed\b|\bgreylisting\b|sender verify failed|sender address rejected"),
    ("rate_limited", r"\bTSS0\d\b|\b4\.7\.28\b|\brate[ -]?limit"
                     r"|too many (?:messages|connections|mails|concurrent)|\bthrottl|\bslow down\b"
                     r"|exceeded (?:the )?(?:\w+ ){0,3}(?:rate|limit)|\bRP-00\d\b"
                     r"|temporarily deferred|\bserver busy\b"),
    ("tls", r"\bTLS\b|\bSTARTTLS\b|\bcertificate\b|\bhandshake\b|encryption (?:is )?required"),
    ("mailbox_full", r"mailbox (?:is )?full|\bover ?quota\b|quota exceeded|insufficient storage"
                     r"|mailbox size"),
    ("invalid_recipient", r"recipient address rejected: access denied|\bRecipientNotFound\b"
                          r"|recipient not found by smtp address lookup"),
]  # fmt: skip
# Enhanced codes (class digit ignored): exact "x.y.z" first, then the "x.y" subject.
_BY_CODE = {
    "1.1": "invalid_recipient", "1.0": "invalid_recipient", "1.6": "invalid_recipient",
    "1.2": "bad_domain", "1.10": "bad_domain", "4.4": "bad_domain",
    "1.7": "policy", "1.8": "policy",  # the sender's address or domain was refused
    "2.2": "mailbox_full",
    "4.1": "connection", "4.2": "connection", "4.0": "connection",
    "4.3": "dns", "4.7": "timeout",
    "4.6": "loop",  # routing loop: too many hops, or a next hop that is ourselves
    "7.10": "tls", "7.11": "tls", "7.5": "tls",
    "7.28": "rate_limited",
}  # fmt: skip
# x.1.* addressing, x.2.* mailbox status, x.7.* security or policy
_BY_SUBJECT = {"1": "invalid_recipient", "2": "invalid_recipient", "7": "policy"}
# Text patterns tried when the code said nothing specific.
_LAST = [
    ("invalid_recipient", r"\buser unknown\b|\bunknown user\b|no such (?:user|mailbox|recipient)\b"
                          r"|\b(?:account|address|mailbox|recipient|user)\b[^.;]{0,50}\bdoes not exist\b"
                          r"|\binvalid (?:recipient|mailbox)\b|\bmailbox (?:unavailable|not found)\b"
                          r"|doesn't have an? \S+ account"),
    ("bad_domain", r"\bdomain (?:not found|does not exist)\b|\bhost not found\b|\bno mx\b|\bnull mx\b"
                   r"|\bunrouteable address\b"),
    ("policy", r"\bspam|\bblocked\b|\bblock ?list|\bblacklist|\blisted\b|\breputation\b|\bpolicy\b"
               r"|\bnot allowed\b|\bdenied\b|\bbanned\b|\bspf\b|\bdkim\b|\bdmarc\b|\brelay\b"
               r"|administrative prohibition"),
    ("timeout", r"\btimed? ?out\b|\btimeout\b"),
    ("connection", r"connection (?:refused|reset|lost|closed)|lost connection|\bnot available\b"
                   r"|\bunreachable\b"),
]  # fmt: skip

_FIRST_RE = [(c, re.compile(p, re.IGNORECASE)) for c, p in _FIRST]
_LAST_RE = [(c, re.compile(p, re.IGNORECASE)) for c, p in _LAST]
_CACHE: dict[Reply, str] = {}
_CACHE_MAX = 4096


def classify(reply: Reply) -> str:
    """The bounce class of a failure reply (one of ``CLASSES``)."""
    cls = _CACHE.get(reply)
    if cls is None:
        cls = _classify(reply)
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        _CACHE[reply] = cls
    return cls


def failure_outcome(reply: Reply) -> Deferred | Bounced:
    """A failure reply as the outcome the queue acts on: 5xx bounces, anything else defers."""
    if reply.code >= 500:
        return Bounced(reply, classify(reply))
    return Deferred(reply, classify(reply))


def _classify(reply: Reply) -> str:
    temporary = reply.code < 500  # the reply code rules; an enhanced code may disagree
    cls = _match(_FIRST_RE, f"{reply.enhanced} {reply.text}", temporary)
    if cls is not None:
        return cls
    by_code = None
    parts = reply.enhanced.split(".")
    if len(parts) == 3 and parts[0] in ("4", "5"):
        detail = f"{parts[1]}.{parts[2]}"
        by_code = _BY_CODE.get(detail) or (_BY_SUBJECT.get(parts[1]) if detail != "0.0" else None)
        if by_code is not None and not (temporary and by_code in _TEMPORARY):
            return by_code
    cls = _match(_LAST_RE, reply.text, temporary)
    if cls is not None:
        return cls
    if reply.code == 421:  # "service not available, closing channel" without a better hint
        return "connection"
    return _TEMPORARY.get(by_code or "", "other")  # 450 4.1.2 "Domain not found": dns


def _match(rules: list[tuple[str, re.Pattern[str]]], text: str, temporary: bool) -> str | None:
    """The first rule's class whose pattern is in ``text``; a temporary reply skips the
    permanent classes (a 4xx "user unknown" is a directory hiccup, not a gone mailbox)."""
    for cls, rx in rules:
        if temporary and cls in _TEMPORARY:
            continue
        if rx.search(text):
            return cls
    return None
