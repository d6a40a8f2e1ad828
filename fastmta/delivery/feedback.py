# SPDX-License-Identifier: MIT
"""Feedback loops: ARF complaint reports (RFC 5965) turned into suppression-list entries.

A report sent to an address in ``[suppression] fbl_addresses`` is queued like any
message (its sender got a ``250`` only after the fsync) and then handed to this
deliverer instead of being sent on: so parsing stays off the receive path, and a
report whose entry could not be written is retried like a deferred delivery
instead of being lost. The original message part's ``X-Fastmta-Ref`` must verify
(delivery/ref.py); its recipient (or, for a token of a multi-recipient
transaction, the report's ``Original-Rcpt-To``) is suppressed for its tenant, and
a ``complaint`` line goes to the delivery log. Anything else is logged and dropped.
"""

from __future__ import annotations

import email
import email.policy
import logging
import time
from email.message import Message
from typing import Any

from fastmta import metrics
from fastmta.config import Config
from fastmta.delivery import Attempt, Destination, ref
from fastmta.deliverylog import DeliveryLog, iso_ts
from fastmta.errors import Deferred, Delivered, Reply
from fastmta.spool.suppression import Entry, SuppressionList

log = logging.getLogger("fastmta.delivery.feedback")

CONSUMED = Reply(250, "2.0.0", "Feedback report consumed")
DROPPED = Reply(250, "2.0.0", "Feedback report dropped")
_RETRY = Reply(451, "4.3.0", "Feedback report not applied yet")


class Complaint(dict[str, str]):
    """What a valid report says: ``rcpt``, ``tenant``, ``id`` (the original message), ``feedback_type``."""


def parse(report: bytes, signer: ref.Signer) -> Complaint | str:
    """A complaint from an ARF report, or the reason the report is dropped."""
    msg = email.message_from_bytes(report, policy=email.policy.compat32)
    if msg.get_content_type() != "multipart/report" or msg.get_param("report-type") != "feedback-report":
        return "not an ARF report (multipart/report; report-type=feedback-report)"
    parts = msg.get_payload()
    if not isinstance(parts, list):
        return "not an ARF report (no parts)"
    fields: Message | None = None
    original: Message | None = None
    for part in parts:
        if not isinstance(part, Message):
            continue
        ctype = part.get_content_type()
        if ctype == "message/feedback-report":
            fields = _inner(part)  # the report fields (RFC 5965 §3.1) are a header block
        elif ctype in ("message/rfc822", "text/rfc822-headers"):
            original = _inner(part)
    if fields is None or original is None:
        return "ARF report without its feedback-report or original message part"
    token = original.get(ref.HEADER)
    if token is None:
        return f"original message carries no {ref.HEADER}"
    found = signer.verify(str(token))
    if found is None:
        return f"{ref.HEADER} does not verify (forged, damaged or another node's key)"
    rcpt = found.rcpt or str(fields.get("Original-Rcpt-To", "")).strip()
    if not rcpt:
        return "no recipient: the token names none and the report has no Original-Rcpt-To"
    return Complaint(rcpt=rcpt, tenant=found.tenant, id=found.msg_id,
                     feedback_type=str(fields.get("Feedback-Type", "")).strip().lower())  # fmt: skip


def _inner(part: Message) -> Message:
    """The message or header block a ``message/*`` (or ``text/rfc822-headers``) part wraps."""
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return payload[0]
    raw = part.get_payload(decode=True)
    return email.message_from_bytes(raw if isinstance(raw, bytes) else b"", policy=email.policy.compat32)


class FeedbackDeliverer:
    """The Deliverer for ``fbl_addresses``: consumes reports, never sends them on."""

    def __init__(self, cfg: Config, spool: Any, suppression: SuppressionList, dlog: DeliveryLog) -> None:
        self.spool = spool
        self.suppression = suppression
        self.dlog = dlog
        self.signer = ref.Signer(ref.load_key(cfg))
        self._m_complaints = metrics.bound(metrics.complaints_total)

    async def deliver(self, dest: Destination, envelope: Any, rcpts: list[int]) -> Attempt:
        start = time.monotonic()
        body = self.spool.body(envelope.id)
        found = parse(body, self.signer) if body is not None else "report body missing from the spool"
        reply = CONSUMED
        if isinstance(found, str):
            log.warning("feedback report %s from <%s> dropped: %s", envelope.id, envelope.sender, found)
            reply = DROPPED
        else:
            try:
                await self.suppression.add_soon(
                    [
                        Entry(
                            found["rcpt"], found["tenant"], f"complaint ({found['feedback_type'] or 'abuse'})"
                        )
                    ]
                )
            except Exception as e:
                log.error("feedback report %s: could not suppress %s: %s", envelope.id, found["rcpt"], e)
                return Attempt(
                    dict.fromkeys(rcpts, Deferred(_RETRY, "other")), "fbl", elapsed=time.monotonic() - start
                )
            self._m_complaints.inc()
            self.dlog.write([{"ts": iso_ts(), "event": "complaint", "id": found["id"], "rcpt": found["rcpt"],
                              "tenant": found["tenant"], "feedback_type": found["feedback_type"],
                              "report": envelope.id}])  # fmt: skip
        return Attempt(dict.fromkeys(rcpts, Delivered(reply)), "fbl", elapsed=time.monotonic() - start)

    def reload(self, cfg: Config) -> None:
        """SIGHUP: tokens are checked with the key file as it is now."""
        self.signer = ref.Signer(ref.load_key(cfg))

    async def hang_up(self, key: str, keep: int = 0) -> int:
        """Reports are consumed here, never sent on: no connection, no cluster lease."""
        return 0

    async def close(self) -> None:
        return None
