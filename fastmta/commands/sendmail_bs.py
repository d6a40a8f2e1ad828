# SPDX-License-Identifier: MIT
"""``fastmta sendmail -bs``: the server's own SMTP session, spoken on stdin/stdout.

The same parser and table-driven ``smtp.session.Session`` as a listener, so a
local client gets exactly the listener's replies, limits, PIPELINING, CHUNKING
and DSN parameters. Only the edges differ: the peer is a local process that may
already inject mail, so it relays anywhere without AUTH (no TLS either), its LF
line ends count as CRLF, and each committed message goes through the same
Injector as plain ``sendmail`` (header fix-ups; spool, else the local listener),
with the pool and tenant its ``X-Fastmta-*`` headers named.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

from fastmta.config import Config
from fastmta.inject import compose
from fastmta.inject.injector import Injector
from fastmta.inject.submit import EX_OK, EX_TEMPFAIL, InjectError
from fastmta.parser import CommandParser
from fastmta.smtp import replies as R
from fastmta.smtp.auth import Users
from fastmta.smtp.dispatch import dispatch
from fastmta.smtp.policy import AuthFailures, Policy
from fastmta.smtp.session import A_BDAT, A_CLOSE, A_COMMIT, A_DATA, A_RESET_BODY, Session, Transaction
from fastmta.spool.ids import new_id

_READ = 65536


class _LocalPolicy(Policy):
    """A local process relays anywhere, as it could with plain ``sendmail``."""

    def is_relay_client(self, ip: str) -> bool:
        return True


class StdioSettings:
    """``session.Settings`` for the stdin/stdout peer: the listener's limits, no TLS, no AUTH."""

    listener = "sendmail"
    submission = False
    starttls = False

    def __init__(self, cfg: Config) -> None:
        limits = cfg.limits
        self.hostname = cfg.hostname
        self.max_size = limits.max_message_size
        self.max_line = limits.max_line_length
        self.max_recipients = limits.max_recipients
        self.max_errors = limits.max_errors
        self.max_hops = limits.max_hops
        self.policy: Policy = _LocalPolicy(cfg)
        self.users = Users()
        self.auth_failures = AuthFailures(cfg.policy.max_auth_failures_per_ip)
        self.new_id = new_id
        self.unhealthy: Callable[[], str | None] = lambda: None  # the injector finds out, then falls back
        self._ehlo = R.ehlo(cfg.hostname, R.ehlo_keywords(self.max_size))

    def ehlo_reply(self, starttls: bool, auth: bool, encrypted: bool = False) -> bytes:
        return self._ehlo

    def rejected(self, reason: str) -> None:
        """No metrics from a one-shot command."""


def serve_stdio(injector: Injector, inp: BinaryIO, out: BinaryIO) -> int:
    """Run one SMTP session over the two streams until QUIT, a forced close or EOF.

    Exit status 0, or 75 when stdin ends inside a transaction (nothing of it queued).
    """
    cfg = injector.cfg
    session = Session(StdioSettings(cfg), "127.0.0.1")
    limits = cfg.limits
    parser = CommandParser(limits.max_line_length, limits.max_message_size, limits.bare_lf)
    out.write(R.banner(cfg.hostname))
    out.flush()
    read = getattr(inp, "read1", inp.read)
    held = b""  # a trailing CR, until we know whether LF follows
    while True:
        data = held + read(_READ)
        if data == held:
            if held:
                _run(injector, session, parser, parser.feed(held))
            return EX_TEMPFAIL if session.in_transaction else EX_OK
        held = b"\r" if data.endswith(b"\r") else b""
        # Local scripts write LF line ends (printf, PHP): take them as CRLF, as Postfix's
        # -bs does. Smuggling is no concern with a peer that may inject anything anyway.
        data = data[: len(data) - len(held)].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        closed = _run(injector, session, parser, parser.feed(data))
        if session.out:
            out.write(b"".join(session.out))
            out.flush()
            session.out.clear()
        if closed:
            return EX_OK


def _run(
    injector: Injector, session: Session, parser: CommandParser, events: list[tuple[int, object]]
) -> bool:
    """Handle a batch of parser events in order (as smtp/protocol.py does); True once closed."""
    while True:
        kick = False  # "BDAT 0": an empty chunk to report without new bytes
        for kind, payload in events:
            act = dispatch(session, kind, payload)
            if act is None:
                continue
            if act[0] == A_DATA:
                parser.start_data()
            elif act[0] == A_BDAT:
                parser.start_bdat(act[1], act[2])
                kick = act[1] == 0
            elif act[0] == A_RESET_BODY:
                parser.reset_body()
            elif act[0] == A_COMMIT:
                _commit(injector, session, act[1], act[2], act[4])  # act[3]: the session's Received:
            elif act[0] == A_CLOSE:
                return True
        if not (parser.pending or kick):  # else: stopped at a DATA/BDAT barrier with bytes left
            return False
        events = parser.feed(b"")


def _commit(injector: Injector, session: Session, msg_id: str, txn: Transaction, body: bytes) -> None:
    """Queue one message of the dialogue and tell the session how it went (without the
    session's trace line: the injector adds its own "from userid" one)."""
    msg = compose.Message.parse(body, strict=False)
    try:
        qid = injector.submit(txn.sender, list(txn.rcpts), msg, dict(txn.params), msg_id=msg_id,
                              pool=txn.pool, tenant=txn.tenant)  # fmt: skip
    except InjectError as e:
        session.commit_failed(e)  # 451 4.3.0: the client keeps the message and retries
        return
    session.commit_done(qid)
