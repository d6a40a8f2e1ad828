# SPDX-License-Identifier: MIT
"""Queue one composed message the way ``sendmail`` does: header fix-ups, then the
spool when this user can open it, else SMTP to the local listener.

Shared by plain ``fastmta sendmail`` and its ``-bs`` dialogue, so both queue a
message the same way.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from fastmta.config import Config
from fastmta.deliverylog import DeliveryLog
from fastmta.inject import compose
from fastmta.inject.submit import (
    EX_DATAERR,
    EX_TEMPFAIL,
    InjectError,
    Rcpt,
    SmtpTarget,
    local_endpoint,
    needs_smtputf8,
    smtp_submit,
    spool_submit,
    spool_writable,
)
from fastmta.smtp import xheaders
from fastmta.spool.records import LISTENER_SENDMAIL


class Injector:
    """Turns one message plus its envelope into a queued message.

    ``full_name`` fills a missing From: header's display name (sendmail ``-F``);
    ``dsn`` holds the RET and ENVID parameters (``-R``, ``-V``) added to every message.
    """

    def __init__(self, cfg: Config, full_name: str = "", dsn: Mapping[str, str] | None = None) -> None:
        self.cfg = cfg
        self.hostname = cfg.hostname
        self.full_name = full_name
        self.dsn = dict(dsn or {})

    def submit(self, sender: str, rcpts: list[Rcpt], msg: compose.Message, params: dict[str, str],
               msg_id: str | None = None, pool: str = "", tenant: str = "") -> str:  # fmt: skip
        """Fix the header and queue: spool first, the local listener second. Returns the queue id.

        ``pool`` and ``tenant`` (the ``X-Fastmta-*`` headers an SMTP dialogue took out) go
        into the envelope; to the listener they go back as those headers, which it takes
        from a local client as from any client that may relay.
        """
        from fastmta.spool.ids import new_id

        msg_id = msg_id or new_id()
        msg.hide_bcc()
        compose.add_missing(msg, hostname=self.hostname, sender=sender or f"MAILER-DAEMON@{self.hostname}",
                            full_name=self.full_name, msg_id=msg_id, uid=os.getuid())  # fmt: skip
        data = msg.to_bytes()
        if len(data) > self.cfg.limits.max_message_size:
            raise InjectError(EX_DATAERR, "message exceeds the size limit")
        if not data.isascii():
            params.setdefault("BODY", "8BITMIME")
        if needs_smtputf8(sender, (r[0] for r in rcpts)):
            params["SMTPUTF8"] = ""
        params.update({k: v for k, v in self.dsn.items() if k in ("RET", "ENVID")})
        errors = []
        if spool_writable(self.cfg):
            try:
                spool_submit(self.cfg, sender, rcpts, data, params, msg_id, pool, tenant)
            except InjectError as e:
                errors.append(str(e))
            else:
                self._log_received(msg_id, sender, rcpts, len(data))
                return msg_id
        host, port, tls = local_endpoint(self.cfg)
        target = SmtpTarget(host, port, tls=tls, verify=False, helo=self.hostname)
        try:
            done = smtp_submit(target, sender, rcpts, xheaders.fields(pool, tenant) + data, params)
        except InjectError as e:
            if e.status == EX_TEMPFAIL and errors:
                raise InjectError(EX_TEMPFAIL, "; ".join([*errors, str(e)])) from None
            raise
        for rcpt, (code, text) in done.refused.items():
            print(f"sendmail: {rcpt}: refused: {code} {text}", file=sys.stderr)
        return done.queue_id

    def _log_received(self, msg_id: str, sender: str, rcpts: list[Rcpt], size: int) -> None:
        """The ``received`` line serve writes for SMTP mail, when the delivery log is a file
        (appends of whole lines are safe beside a running server). A log on stdout belongs to
        the server, not to this process (whose stdout may be a terminal or a cron mail): the
        server writes the line when it takes the message in (scheduler/feeder.py)."""
        if not self.cfg.log.file:
            return
        try:
            dlog = DeliveryLog(self.cfg.log.file, node=self.cfg.cluster.node_id)
        except OSError as e:
            print(f"sendmail: delivery log not written: {e.strerror}", file=sys.stderr)
            return
        try:
            dlog.event("received", msg_id, sender, [r[0] for r in rcpts], size=size, client_ip="",
                       listener=LISTENER_SENDMAIL)  # fmt: skip
        finally:
            dlog.close()
