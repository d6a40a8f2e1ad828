# SPDX-License-Identifier: MIT
"""Errors that carry SMTP meaning across module boundaries, and delivery outcomes.

Anything that can reach a peer or the queue is an ``SmtpError`` with a reply code,
an enhanced status code (RFC 3463) and generic text: never a path, a config value
or an exception message. Delivery reports one outcome per recipient and never
leaks a bare exception; an unexpected error counts as temporary.
"""

from __future__ import annotations

from dataclasses import dataclass


class SmtpError(Exception):
    """A failure with an SMTP reply attached: ``code``, ``enhanced``, ``text``."""

    def __init__(self, code: int, enhanced: str, text: str, temporary: bool | None = None) -> None:
        super().__init__(f"{code} {enhanced} {text}")
        self.code = code
        self.enhanced = enhanced
        self.text = text
        self.temporary = (400 <= code < 500) if temporary is None else temporary


class SpoolFullError(SmtpError):
    """The spool cannot take more (map ceiling or disk full): the session answers 452 4.3.1."""

    def __init__(self, text: str = "Insufficient system storage") -> None:
        super().__init__(452, "4.3.1", text, temporary=True)


class SpoolUnavailableError(SmtpError):
    """The spool is closed or broken; nothing was written."""

    def __init__(self, text: str = "Queue temporarily unavailable") -> None:
        super().__init__(451, "4.3.0", text, temporary=True)


@dataclass(frozen=True, slots=True)
class Reply:
    """One reply from a next hop, as the delivery log and DSNs report it."""

    code: int
    enhanced: str
    text: str

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}".replace("  ", " ").strip()


@dataclass(frozen=True, slots=True)
class Delivered:
    reply: Reply


@dataclass(frozen=True, slots=True)
class Deferred:
    reply: Reply
    bounce_class: str = "other"


@dataclass(frozen=True, slots=True)
class Bounced:
    reply: Reply
    bounce_class: str = "other"


Outcome = Delivered | Deferred | Bounced
