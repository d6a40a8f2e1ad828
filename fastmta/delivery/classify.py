# SPDX-License-Identifier: MIT
"""Bounce classes: what kind of failure a next hop's reply describes.

A class is a small fixed word (a metric label and a delivery-log field), decided
from the RFC 3463 enhanced status code plus the text patterns large receivers
really use (Yahoo ``TSS04``, Gmail ``4.7.28``, "mailbox full", "spamhaus" …).
Rate-limit wording wins over the enhanced code, because receivers often send
``421 4.7.0`` both for "slow down" and for "go away".
"""

from __future__ import annotations

import re

from fastmta.errors import Bounced, Deferred, Reply

CLASSES = (
    "invalid_recipient", "bad_domain", "mailbox_full", "policy", "rate_limited",
    "tls", "dns", "timeout", "connection", "loop", "other",
)  # fmt: skip

# Text patterns, tried in order before the enhanced code (first match wins).
_FIRST = [
    ("rate_limited", r"TSS0\d|4\.7\.28|rate.?limit|too many (?:messages|connections|mails|concurrent)"
                     r"|throttl|slow down|try again later|exceeded .*(?:rate|limit)|RP-00\d|deferred due to"),
    ("tls", r"\bTLS\b|STARTTLS|certificate|handshake|encryption (?:is )?required"),
    ("mailbox_full", r"mailbox (?:is )?full|over ?quota|quota exceeded|insufficient storage|mailbox size"),
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
    ("invalid_recipient", r"user unknown|unknown user|no such (?:user|mailbox|recipient)"
                          r"|does not exist|recipient (?:address )?rejected|invalid (?:recipient|mailbox)"
                          r"|mailbox unavailable"),
    ("bad_domain", r"domain (?:not found|does not exist)|host not found|no mx|null mx"),
    ("policy", r"spam|blocked|block ?list|blacklist|listed|reputation|policy|not allowed|denied|\bspf\b"
               r"|\bdkim\b|\bdmarc\b|relay"),
    ("timeout", r"timed? ?out|timeout"),
    ("connection", r"connection (?:refused|reset|lost|closed)|lost connection|not available|unreachable"),
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
    text = f"{reply.enhanced} {reply.text}"
    for cls, rx in _FIRST_RE:
        if rx.search(text):
            return cls
    parts = reply.enhanced.split(".")
    if len(parts) == 3 and parts[0] in ("4", "5"):
        detail = f"{parts[1]}.{parts[2]}"
        if detail in _BY_CODE:
            return _BY_CODE[detail]
        if detail != "0.0" and parts[1] in _BY_SUBJECT:
            return _BY_SUBJECT[parts[1]]
    for cls, rx in _LAST_RE:
        if rx.search(reply.text):
            return cls
    if reply.code == 421:  # "service not available, closing channel" without a better hint
        return "connection"
    return "other"
