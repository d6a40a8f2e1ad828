# SPDX-License-Identifier: MIT
"""Can this next hop take this message at all? Checked against its EHLO/LHLO keywords.

Shared by the SMTP and the LMTP client, so a hop without SMTPUTF8, 8BITMIME or
room for the message (SIZE) is refused the same way whichever protocol reaches it:
before MAIL, permanently, without sending anything. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from fastmta.delivery import replies
from fastmta.errors import Bounced


def needs_smtputf8(sender: str, addrs: Iterable[str], params: Mapping[str, str], body: bytes) -> bool:
    """The message asked for SMTPUTF8 and needs it: a non-ASCII address or header (RFC 6531)."""
    if "SMTPUTF8" not in params:
        return False
    if not sender.isascii() or not all(a.isascii() for a in addrs):
        return True
    end = body.find(b"\r\n\r\n")
    return not body[: end if end >= 0 else len(body)].isascii()


def unfit(ext: Mapping[str, str], sender: str, addrs: Iterable[str], params: Mapping[str, str],
          body: bytes) -> Bounced | None:  # fmt: skip
    """A reason this hop cannot take this message, or None.

    8-bit bodies are not downgraded to quoted-printable (that rewrites MIME parts and
    breaks signatures); they bounce with 5.6.3, as RFC 6152 allows. UTF-8 addresses
    are never downgraded either (RFC 6531 §3.4): 5.6.7.
    """
    size = ext.get("SIZE", "")
    if size.isdigit() and 0 < int(size) < len(body):
        return Bounced(replies.TOO_BIG, "other")
    if "SMTPUTF8" not in ext and needs_smtputf8(sender, addrs, params, body):
        return Bounced(replies.NEEDS_SMTPUTF8, "other")
    if "8BITMIME" not in ext and not body.isascii():
        return Bounced(replies.NEEDS_8BITMIME, "other")
    return None
