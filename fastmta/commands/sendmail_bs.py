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
from fastmta.smtp.core import Core
from fastmta.smtp.policy import AuthFailures, Policy
from fastmta.smtp.session import A_COMMIT, Session, Transaction
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

    def write(replies: bytes) -> None:
        out.write(replies)
        out.flush()

    core = Core(session, parser, write)
    read = getattr(inp, "read1", inp.read)
    held = b""  # a trailing CR, until we know whether LF follows
    while True:
        data = held + read(_READ)
        if data == held:
            if held:
                _run(injector, core, held)
            return EX_TEMPFAIL if session.in_transaction else EX_OK
        held = b"\r" if data.endswith(b"\r") else b""
        # Local scripts write LF line ends (printf, PHP): take them as CRLF, as Postfix's
        # -bs does. Smuggling is no concern with a peer that may inject anything anyway.
        data = data[: len(data) - len(held)].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if _run(injector, core, data):
            return EX_OK


def _run(injector: Injector, core: Core, data: bytes) -> bool:
    """Handle one read as the listener's protocol does (the same core); True once closed.
    Commits are synchronous here: the core goes on at once with what followed."""
    act = core.feed(data)
    while act is not None:
        if act[0] != A_COMMIT:
            return True  # A_CLOSE: no AUTH or STARTTLS is offered on stdin
        _commit(injector, core.session, act[1], act[2], act[4])  # act[3]: the session's Received:
        act = core.resume()
    return False


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
