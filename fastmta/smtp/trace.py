# SPDX-License-Identifier: MIT
"""Hop counting: how many MTAs and mailbox deliveries a message has already passed.

Every MTA prepends a ``Received:`` field (RFC 5321 §4.4) and every local delivery a
``Delivered-To:``; a message carrying more than ``[limits] max_hops`` of them is
going round in a loop (Postfix's ``hopcount_limit``, qmail's ``MAXHOPS``). The count
runs on both paths that must stop a loop: the receiving session (refuse with
``554 5.4.6``) and the deliverers (bounce with ``5.4.6``). Both are hot, so the
count is a handful of C-level bytes operations over the header block only, never
a Python loop over lines, and never a look at the body.
"""

from __future__ import annotations

_FIELDS = (b"received:", b"delivered-to:")
_AFTER_CRLF = tuple(b"\n" + f for f in _FIELDS)


def hops(message: bytes) -> int:
    """``Received:`` plus ``Delivered-To:`` fields in the header block of a CRLF message.

    The header block ends at the first empty line (a message without one is all
    header). Field names are case-insensitive (RFC 5322 §1.2.2); a folded
    continuation line starts with white space, so it never counts.
    """
    if message[:2] == b"\r\n":
        return 0  # no header block at all
    end = message.find(b"\r\n\r\n")
    head = (message if end < 0 else message[: end + 2]).lower()
    n = head.count(_AFTER_CRLF[0]) + head.count(_AFTER_CRLF[1])
    return n + 1 if head.startswith(_FIELDS) else n
