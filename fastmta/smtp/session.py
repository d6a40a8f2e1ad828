# SPDX-License-Identifier: MIT
"""The ESMTP state machine: (state, event) → replies + actions, with no transport and no loop.

Every state transition is in ``TABLE`` (which verbs each state takes) and
``MOVES`` (which state changes are legal), and goes through ``_set_state``. A verb
the table does not list for the current state gets ``503 5.5.1``; a verb nobody
knows gets ``500 5.5.1``. Handlers append catalogue bytes to ``self.out`` and
return at most one action tuple for ``protocol.py`` to carry out (start DATA mode,
start a BDAT chunk, STARTTLS, commit, check AUTH, close). The session never
writes, never awaits and never touches the spool: the commit is an action whose
result comes back through ``commit_done`` / ``commit_failed``.
"""

from __future__ import annotations

import binascii
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastmta.errors import SpoolFullError
from fastmta.smtp import auth, xheaders
from fastmta.smtp import replies as R
from fastmta.smtp.commands import ArgError, domain_of, parse_mail, parse_rcpt
from fastmta.smtp.headers import missing_fields
from fastmta.smtp.policy import AuthFailures, Policy
from fastmta.smtp.trace import hops

# --- states -------------------------------------------------------------------------
S_INIT = 0  # connected, no EHLO/HELO yet
S_READY = 1  # greeted, no transaction
S_MAIL = 2  # MAIL accepted
S_RCPT = 3  # at least one RCPT accepted
S_DATA = 4  # parser is in DATA mode
S_BDAT = 5  # inside a BDAT sequence (between chunks or in one)
S_COMMIT = 6  # waiting for the spool
S_AUTH = 7  # SASL exchange: lines are responses, not commands
S_TLS = 8  # STARTTLS accepted, handshake pending
S_CLOSED = 9
STATE_NAMES = ("INIT", "READY", "MAIL", "RCPT", "DATA", "BDAT", "COMMIT", "AUTH", "TLS", "CLOSED")

# --- actions (first item of the tuple a handler returns) ----------------------------
A_DATA = 1  # (A_DATA,): parser.start_data()
A_BDAT = 2  # (A_BDAT, size, last): parser.start_bdat(size, last)
A_STARTTLS = 3  # (A_STARTTLS,): parser.discard(), write replies, upgrade the transport
A_COMMIT = 4  # (A_COMMIT, msg_id, txn, received, body): await the spool, then commit_done/commit_failed
A_AUTH = 5  # (A_AUTH, user, password): check off the loop, then auth_done
A_CLOSE = 6  # (A_CLOSE,): write replies, then close
A_RESET_BODY = 7  # (A_RESET_BODY,): parser.reset_body() (RSET inside BDAT)

Action = tuple[Any, ...]

_ANYTIME = {b"NOOP": "_noop", b"RSET": "_rset", b"QUIT": "_quit", b"HELP": "_help",
            b"VRFY": "_vrfy", b"EXPN": "_expn", b"EHLO": "_ehlo", b"HELO": "_helo"}  # fmt: skip
# Which verbs each state takes. BDAT in a state that cannot take it still has its
# chunk read (and refused): otherwise the chunk's bytes would be read as commands.
TABLE: dict[int, dict[bytes, str]] = {
    S_INIT: {**_ANYTIME, b"BDAT": "_bdat_refused"},
    S_READY: {
        **_ANYTIME,
        b"MAIL": "_mail",
        b"STARTTLS": "_starttls",
        b"AUTH": "_auth",
        b"BDAT": "_bdat_refused",
    },
    S_MAIL: {**_ANYTIME, b"RCPT": "_rcpt", b"BDAT": "_bdat_refused"},
    S_RCPT: {**_ANYTIME, b"RCPT": "_rcpt", b"DATA": "_data", b"BDAT": "_bdat"},
    S_BDAT: {b"BDAT": "_bdat", b"RSET": "_rset", b"QUIT": "_quit", b"NOOP": "_noop"},
}
KNOWN_VERBS = frozenset(v for verbs in TABLE.values() for v in verbs) | {b"DATA", b"STARTTLS", b"AUTH"}
# Specific texts for common misorderings; anything else not in TABLE is R_503_BAD_SEQUENCE.
_MISPLACED = {
    (S_INIT, b"MAIL"): R.R_503_NEED_EHLO, (S_INIT, b"RCPT"): R.R_503_NEED_EHLO,
    (S_INIT, b"DATA"): R.R_503_NEED_EHLO, (S_INIT, b"AUTH"): R.R_503_NEED_EHLO,
    (S_INIT, b"STARTTLS"): R.R_503_NEED_EHLO,
    (S_READY, b"RCPT"): R.R_503_NEED_MAIL, (S_READY, b"DATA"): R.R_503_NEED_MAIL,
    (S_MAIL, b"DATA"): R.R_503_NEED_RCPT, (S_MAIL, b"MAIL"): R.R_503_NESTED_MAIL,
    (S_RCPT, b"MAIL"): R.R_503_NESTED_MAIL, (S_BDAT, b"DATA"): R.R_503_MIXED_DATA,
}  # fmt: skip
# Exactly the moves some dialogue makes (tests/unit/test_session.py explores them all).
# Past the greeting RSET returns to READY, never INIT; nothing times out while the
# spool commits or a TLS handshake runs; nothing moves out of CLOSED.
MOVES: dict[int, frozenset[int]] = {
    S_INIT: frozenset({S_INIT, S_READY, S_CLOSED}),
    S_READY: frozenset({S_READY, S_MAIL, S_TLS, S_AUTH, S_CLOSED}),
    S_MAIL: frozenset({S_READY, S_RCPT, S_CLOSED}),
    S_RCPT: frozenset({S_READY, S_RCPT, S_DATA, S_BDAT, S_CLOSED}),
    S_DATA: frozenset({S_READY, S_COMMIT, S_CLOSED}),
    S_BDAT: frozenset({S_READY, S_BDAT, S_COMMIT, S_CLOSED}),
    S_COMMIT: frozenset({S_READY}),
    S_AUTH: frozenset({S_READY, S_CLOSED}),
    S_TLS: frozenset({S_INIT}),
    S_CLOSED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A bug: a handler tried a state change MOVES does not allow."""


@dataclass(slots=True)
class Transaction:
    """One mail transaction as the session accepted it; the server turns it into an Envelope."""

    sender: str
    params: dict[str, str]
    rcpts: list[tuple[str, str, str]] = field(default_factory=list)  # (addr, notify, orcpt)
    helo: str = ""
    client_ip: str = ""
    listener: str = ""
    user: str = ""
    tls: str = ""
    pool: str = ""  # from X-Fastmta-Pool (smtp/xheaders.py)
    tenant: str = ""  # from X-Fastmta-Tenant


class Settings(Protocol):
    """What a session needs to know about its listener (built by listener.py, swapped on SIGHUP)."""

    hostname: str
    listener: str
    submission: bool
    starttls: bool  # the listener offers STARTTLS
    max_size: int
    max_line: int  # command lines, CRLF included; AUTH lines may be longer (auth.MAX_LINE)
    max_recipients: int
    max_errors: int
    max_hops: int  # Received:/Delivered-To: fields a message may arrive with
    policy: Policy
    users: auth.Users
    auth_failures: AuthFailures

    def new_id(self) -> str: ...

    def unhealthy(self) -> str | None: ...

    def ehlo_reply(self, starttls: bool, auth: bool, encrypted: bool = False) -> bytes: ...

    def rejected(self, reason: str) -> None: ...


_MAX_HELO = 100
_date_cache: list[Any] = [0, ""]


def _rfc5322_date() -> str:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(now))
    return str(_date_cache[1])


def _printable(text: str) -> str:
    """Peer-supplied text made safe for a header: printable, no parentheses, bounded."""
    text = text[:_MAX_HELO]
    if text.isascii() and text.isprintable() and "(" not in text and ")" not in text:
        return text
    return "".join(c if c.isprintable() and c not in "()" and c.isascii() else "?" for c in text)


class Session:
    """One inbound SMTP conversation's state; fed events by protocol.py."""

    __slots__ = ("cfg", "state", "out", "client_ip", "relay_client", "helo", "esmtp", "tls", "user",
                 "errors", "txn", "draining", "_bdat_last", "_bdat_size", "_bdat_total", "_bdat_refusal",
                 "_sasl_mech", "_sasl_user", "_max_text", "_rcvd_key", "_rcvd_parts")  # fmt: skip

    def __init__(self, cfg: Settings, client_ip: str, tls: str = "") -> None:
        self.cfg = cfg
        self.state = S_INIT
        self.out: list[bytes] = []
        self.client_ip = client_ip
        self.relay_client = cfg.policy.is_relay_client(client_ip)
        self.helo = ""
        self.esmtp = False
        self.tls = tls  # "" or "TLSv1.3 TLS_AES_256_GCM_SHA384"
        self.user = ""
        self.errors = 0
        self.txn: Transaction | None = None
        self.draining = False
        self._bdat_last = False
        self._bdat_size = 0
        self._bdat_total = 0
        self._bdat_refusal: bytes | None = None
        self._sasl_mech = ""
        self._sasl_user = ""
        self._max_text = cfg.max_line - 2  # the parser may pass longer lines: AUTH ones
        self._rcvd_key: tuple[Any, ...] = ()
        self._rcvd_parts = ("", "")

    # --- plumbing -------------------------------------------------------------------
    def _set_state(self, new: int) -> None:
        if new not in MOVES[self.state]:
            raise IllegalTransition(f"{STATE_NAMES[self.state]} -> {STATE_NAMES[new]}")
        self.state = new

    def _error(self, reply: bytes, reason: str = "") -> Action | None:
        """Send an error reply; past ``max_errors`` send 421 4.7.0 instead and close."""
        self.errors += 1
        if reason:
            self.cfg.rejected(reason)
        if self.errors > self.cfg.max_errors:
            self.out.append(R.R_421_TOO_MANY_ERRORS)
            self._set_state(S_CLOSED)
            return (A_CLOSE,)
        self.out.append(reply)
        return None

    def _reset_txn(self) -> None:
        self.txn = None
        self._bdat_total = 0
        self._bdat_refusal = None

    def _idle_state(self) -> int:
        return S_READY if self.helo else S_INIT

    @property
    def in_transaction(self) -> bool:
        return self.state not in (S_INIT, S_READY, S_CLOSED)

    # --- events ----------------------------------------------------------------------
    def line(self, line: bytes) -> Action | None:
        """One command line (CRLF removed). The compiled core (smtp/_core.pyx ``_line``)
        sends plain commands straight to their ``_HANDLERS`` entry: a check added here
        that is not in that table must be added there too."""
        if len(line) > self._max_text and not self._auth_line(line):
            return self.line_too_long()
        if self.state == S_AUTH:
            return self._sasl_response(line)
        verb = line[:4].upper()
        if len(line) > 4 and line[4] != 32:  # not "VERB" or "VERB ..."
            verb = line.split(b" ", 1)[0].upper()
        handler = _HANDLERS[self.state].get(verb)
        if handler is None:
            if verb not in KNOWN_VERBS:
                return self._error(R.R_500_UNKNOWN, "syntax")
            return self._error(_MISPLACED.get((self.state, verb), R.R_503_BAD_SEQUENCE), "sequence")
        result: Action | None = handler(self, line[len(verb) + 1 :])
        return result

    def line_too_long(self) -> Action | None:
        if self.state == S_AUTH:
            self._set_state(S_READY)
        return self._error(R.R_500_LINE_TOO_LONG, "line_too_long")

    def data_end(self, body: bytes) -> Action | None:
        """End of a DATA body or of the last BDAT chunk: commit, or refuse a refused BDAT."""
        if self._bdat_refusal is not None:
            return self._bdat_refused_end()
        txn = self.txn
        if txn is None or self.state not in (S_DATA, S_BDAT):
            return None
        if hops(body) > self.cfg.max_hops:  # a mail loop: refused whole, like a smuggling attempt
            return self._body_refused(R.R_554_TOO_MANY_HOPS, "too_many_hops")
        tags = xheaders.extract(body)
        if tags is not None:
            refusal = self._tags_refusal(tags)
            if refusal is not None:
                return self._body_refused(refusal, "xheader")
            txn.pool, txn.tenant, body = tags.pool, tags.tenant, tags.body
        msg_id = self.cfg.new_id()
        self._set_state(S_COMMIT)
        # The Received: line travels beside the body, not joined to it: no copy of the body.
        head = self._received(msg_id, txn)
        if self.cfg.submission:  # our own clients' mail gets a missing Date:/Message-ID: (RFC 6409 §8)
            head += missing_fields(body, msg_id, self.cfg.hostname)
        return (A_COMMIT, msg_id, txn, head, body)

    def _tags_refusal(self, tags: xheaders.Tags) -> bytes | None:
        """Only clients that may relay choose pool and tenant, and only pools that exist."""
        if not (self.relay_client or self.user):
            return R.R_550_XHEADER_DENIED
        if not tags.valid:
            return R.R_550_XHEADER_BAD
        if tags.pool and tags.pool not in self.cfg.policy.pools:
            return R.R_550_POOL_UNKNOWN
        return None

    def data_too_big(self) -> Action | None:
        return self._body_refused(R.R_552_TOO_BIG, "size")

    def data_bare_lf(self) -> Action | None:
        # SMTP smuggling: refused whole after the real CRLF.CRLF; the session continues.
        return self._body_refused(R.R_550_SMUGGLING, "smuggling")

    def _body_refused(self, reply: bytes, reason: str) -> Action | None:
        """The body was read to its end but is refused: the transaction ends, the session goes on."""
        if self._bdat_refusal is not None:
            return self._bdat_refused_end()
        self._reset_txn()
        self._set_state(S_READY)
        return self._error(reply, reason)

    def bdat_chunk(self) -> Action | None:
        """A BDAT chunk was read; a non-final one is acknowledged (the final one ends in data_end)."""
        if self._bdat_last:
            return None
        if self._bdat_refusal is not None:
            return self._bdat_refused_end()
        self.out.append(R.chunk_ok(self._bdat_size))
        return None

    def commit_done(self, msg_id: str) -> None:
        self.out.append(R.queued(msg_id))
        self._reset_txn()
        self._set_state(S_READY)

    def commit_failed(self, error: BaseException) -> None:
        full = isinstance(error, SpoolFullError)
        self.cfg.rejected("spool_full" if full else "local_error")
        self.out.append(R.R_452_STORAGE if full else R.R_451_LOCAL_ERROR)
        self._reset_txn()
        self._set_state(S_READY)

    def auth_done(self, ok: bool, user: str) -> Action | None:
        self._set_state(S_READY)
        if ok:
            self.user = user
            self.out.append(R.R_235_AUTH_OK)
            return None
        if self.cfg.auth_failures.blocked(self.client_ip):
            self.out.append(R.R_421_AUTH_LIMIT)
            self._set_state(S_CLOSED)
            return (A_CLOSE,)
        return self._error(R.R_535_AUTH_FAILED, "auth_failed")

    def tls_started(self, description: str) -> None:
        """The STARTTLS handshake finished: forget everything (RFC 3207 §4.2), EHLO again."""
        self.tls = description
        self.helo = ""
        self.esmtp = False
        self.user = ""
        self._reset_txn()
        self._set_state(S_INIT)

    def timeout(self) -> Action:
        self.out.append(R.R_421_TIMEOUT)
        self.cfg.rejected("timeout")
        self._set_state(S_CLOSED)
        return (A_CLOSE,)

    # --- command handlers: arg is the bytes after "VERB " ---------------------------------
    def _noop(self, arg: bytes) -> None:
        self.out.append(R.R_250_OK)

    def _help(self, arg: bytes) -> None:
        self.out.append(R.R_214_HELP)

    def _vrfy(self, arg: bytes) -> Action | None:
        if not arg.strip():
            return self._error(R.R_501_SYNTAX, "syntax")
        self.out.append(R.R_252_VRFY)
        return None

    def _expn(self, arg: bytes) -> None:
        self.out.append(R.R_502_EXPN)

    def _quit(self, arg: bytes) -> Action:
        self.out.append(R.R_221_BYE)
        self._set_state(S_CLOSED)
        return (A_CLOSE,)

    def _rset(self, arg: bytes) -> Action | None:
        in_bdat = self.state == S_BDAT
        self._reset_txn()
        self._set_state(self._idle_state())
        self.out.append(R.R_250_RESET)
        return (A_RESET_BODY,) if in_bdat else None

    def _greet(self, arg: bytes) -> bool:
        name = arg.strip(b" ")
        if not name or b" " in name:
            return False
        self.helo = _printable(name.decode("utf-8", "replace"))
        self._reset_txn()
        self._set_state(S_READY)  # EHLO/HELO also reset a transaction (RFC 5321 §4.1.4)
        return True

    def _ehlo(self, arg: bytes) -> Action | None:
        if not self._greet(arg):
            return self._error(R.R_501_EHLO_SYNTAX, "syntax")
        self.esmtp = True
        self.out.append(self.cfg.ehlo_reply(self._offer_starttls(), self._offer_auth(), bool(self.tls)))
        return None

    def _helo(self, arg: bytes) -> Action | None:
        if not self._greet(arg):
            return self._error(R.R_501_EHLO_SYNTAX, "syntax")
        self.esmtp = False
        self.out.append(R.helo(self.cfg.hostname))
        return None

    def _offer_starttls(self) -> bool:
        return self.cfg.starttls and not self.tls

    def _offer_auth(self) -> bool:
        return bool(self.tls) and bool(self.cfg.users) and not self.user

    def _auth_line(self, line: bytes) -> bool:
        """RFC 4954 §4: an AUTH command (initial response) or SASL response may be longer
        than other command lines, where AUTH is offered; the parser caps it at auth.MAX_LINE."""
        return self.state == S_AUTH or (line[:5].upper() == b"AUTH " and self._offer_auth())

    def _mail(self, arg: bytes) -> Action | None:
        if arg[:5].upper() != b"FROM:":
            return self._error(R.R_501_SYNTAX, "syntax")
        if self.cfg.submission and not self.user:
            return self._error(R.R_530_AUTH_REQUIRED, "auth_required")
        try:
            sender, params = parse_mail(arg[5:].decode("utf-8"), self.cfg.max_size, self.esmtp)
        except UnicodeDecodeError:
            return self._error(R.R_501_SYNTAX, "syntax")
        except ArgError as e:
            return self._error(e.reply, "size" if e.reply is R.R_552_TOO_BIG else "syntax")
        if "REQUIRETLS" in params and not self.tls:  # offered only over TLS (RFC 8689 §4.1)
            return self._error(R.R_530_REQUIRETLS_NEEDS_TLS, "tls")
        self.txn = Transaction(sender, params, helo=self.helo, client_ip=self.client_ip,
                               listener=self.cfg.listener, user=self.user, tls=self.tls)  # fmt: skip
        self._set_state(S_MAIL)
        self.out.append(R.R_250_SENDER_OK)
        return None

    def _rcpt(self, arg: bytes) -> Action | None:
        txn = self.txn
        assert txn is not None
        if arg[:3].upper() != b"TO:":
            return self._error(R.R_501_SYNTAX, "syntax")
        if len(txn.rcpts) >= self.cfg.max_recipients:
            self.cfg.rejected("too_many_recipients")
            self.out.append(R.R_452_TOO_MANY_RCPTS)  # a 4xx the client acts on; not a bad command
            return None
        try:
            addr, notify, orcpt = parse_rcpt(arg[3:].decode("utf-8"), "SMTPUTF8" in txn.params)
        except UnicodeDecodeError:
            return self._error(R.R_501_SYNTAX, "syntax")
        except ArgError as e:
            return self._error(e.reply, "syntax")
        if (notify or orcpt) and not self.esmtp:
            return self._error(R.R_555_BAD_PARAM, "syntax")
        if "@" not in addr:  # RFC 5321 §4.5.1: <postmaster> must be accepted
            addr = f"{addr}@{self.cfg.hostname}"
        else:
            domain = domain_of(addr)
            policy = self.cfg.policy
            if not policy.may_send_to(domain, self.relay_client, bool(self.user)):
                return self._error(R.R_554_RELAY_DENIED, "relay_denied")
            if not policy.mailbox_exists(domain, addr):
                return self._error(R.R_550_NO_MAILBOX, "no_mailbox")
        txn.rcpts.append((addr, notify, orcpt))
        self._set_state(S_RCPT)
        self.out.append(R.R_250_RCPT_OK)
        return None

    def _data(self, arg: bytes) -> Action | None:
        if arg.strip(b" "):
            return self._error(R.R_501_SYNTAX, "syntax")
        if self.cfg.unhealthy() is not None:
            self.cfg.rejected("spool_unhealthy")
            self.out.append(R.R_452_STORAGE)
            return None
        self._set_state(S_DATA)
        self.out.append(R.R_354_DATA)
        return (A_DATA,)

    @staticmethod
    def _bdat_args(arg: bytes) -> tuple[int, bool] | None:
        parts = arg.split()
        if not 1 <= len(parts) <= 2 or not parts[0].isdigit() or len(parts[0]) > 15:
            return None
        if len(parts) == 2 and parts[1].upper() != b"LAST":
            return None
        return int(parts[0]), len(parts) == 2

    def _bdat_bad_syntax(self) -> Action:
        # Without a valid size the chunk's end is unknown: the only safe move is to close.
        self.errors += 1
        self.cfg.rejected("syntax")
        self.out.append(R.R_501_SYNTAX)
        self._set_state(S_CLOSED)
        return (A_CLOSE,)

    def _bdat(self, arg: bytes) -> Action:
        args = self._bdat_args(arg)
        if args is None:
            return self._bdat_bad_syntax()
        size, last = args
        self._bdat_last = last
        self._bdat_size = size
        self._bdat_total += size
        if self.state == S_RCPT and self.cfg.unhealthy() is not None:
            self.cfg.rejected("spool_unhealthy")
            self._bdat_refusal = R.R_452_STORAGE
            return (A_BDAT, size, True)
        if self._bdat_total > self.cfg.max_size:
            # RFC 3030 §3: the chunk is still read; the transaction fails as a whole.
            self._bdat_refusal = R.R_552_TOO_BIG
            return (A_BDAT, size, True)
        self._set_state(S_BDAT)
        return (A_BDAT, size, last)

    def _bdat_refused(self, arg: bytes) -> Action:
        args = self._bdat_args(arg)
        if args is None:
            return self._bdat_bad_syntax()
        self._bdat_last = True
        self._bdat_refusal = _MISPLACED.get((self.state, b"DATA"), R.R_503_BAD_SEQUENCE)
        return (A_BDAT, args[0], True)

    def _bdat_refused_end(self) -> Action | None:
        reply = self._bdat_refusal
        assert reply is not None
        self._bdat_refusal = None
        if self.state in (S_RCPT, S_BDAT):  # the transaction itself failed
            self._reset_txn()
            self._set_state(S_READY)
        reason = {R.R_552_TOO_BIG: "size", R.R_452_STORAGE: ""}.get(reply, "sequence")
        if not reason:
            self.out.append(reply)
            return None
        return self._error(reply, reason)

    def _starttls(self, arg: bytes) -> Action | None:
        if arg.strip(b" "):
            return self._error(R.R_501_SYNTAX, "syntax")
        if not self._offer_starttls():
            return self._error(R.R_454_TLS_UNAVAILABLE if not self.tls else R.R_503_BAD_SEQUENCE, "tls")
        self._set_state(S_TLS)
        self.out.append(R.R_220_TLS_GO)
        return (A_STARTTLS,)

    def _auth(self, arg: bytes) -> Action | None:
        if self.user:
            return self._error(R.R_503_ALREADY_AUTH, "sequence")
        if not self.cfg.users:
            return self._error(R.R_503_NO_AUTH, "sequence")
        if not self.tls:
            return self._error(R.R_538_ENCRYPTION_REQUIRED, "auth_required")
        if self.cfg.auth_failures.blocked(self.client_ip):
            self.out.append(R.R_421_AUTH_LIMIT)
            self._set_state(S_CLOSED)
            return (A_CLOSE,)
        mech, _, initial = arg.strip(b" ").partition(b" ")
        mech = mech.upper()
        if mech not in (b"PLAIN", b"LOGIN"):
            return self._error(R.R_504_AUTH_MECH, "syntax")
        self._sasl_mech = mech.decode()
        self._sasl_user = ""
        self._set_state(S_AUTH)
        if initial:
            return self._sasl_response(initial)
        self.out.append(R.R_334_EMPTY if mech == b"PLAIN" else R.R_334_USERNAME)
        return None

    def _sasl_response(self, line: bytes) -> Action | None:
        if line.strip() == b"*":
            self._set_state(S_READY)
            return self._error(R.R_501_AUTH_CANCELLED, "auth_failed")
        try:
            data = auth.b64decode(line.strip().decode("ascii"))
            if self._sasl_mech == "PLAIN":
                user, password = auth.decode_plain(data)
                return (A_AUTH, user, password)
            text = data.decode("utf-8")
        except (ValueError, UnicodeDecodeError, binascii.Error):
            self._set_state(S_READY)
            return self._error(R.R_501_BAD_BASE64, "auth_failed")
        if not self._sasl_user:
            if not text:
                self._set_state(S_READY)
                return self._error(R.R_501_BAD_BASE64, "auth_failed")
            self._sasl_user = text
            self.out.append(R.R_334_PASSWORD)
            return None
        return (A_AUTH, self._sasl_user, text)

    # --- Received: (RFC 5321 §4.4, RFC 3848 protocol names) ----------------------------
    def _received(self, msg_id: str, txn: Transaction) -> bytes:
        utf8 = "SMTPUTF8" in txn.params
        key = (self.cfg, self.helo, self.esmtp, self.tls, bool(self.user), utf8)
        if key != self._rcvd_key:  # the parts around the id change only with EHLO, TLS, AUTH, reload
            self._rcvd_key = key
            self._rcvd_parts = self._received_parts(utf8)
        head, tail = self._rcvd_parts
        rcpts = txn.rcpts
        if len(rcpts) == 1:
            return f"{head}{msg_id}{tail}\r\n\tfor <{rcpts[0][0]}>; {_rfc5322_date()}\r\n".encode()
        return f"{head}{msg_id}{tail}; {_rfc5322_date()}\r\n".encode()

    def _received_parts(self, utf8: bool) -> tuple[str, str]:
        """The text before and after the queue id, constant for a connection's state."""
        if not self.esmtp:
            proto = "SMTP"
        else:
            proto = ("UTF8SMTP" if utf8 else "ESMTP") + ("S" if self.tls else "") + ("A" if self.user else "")
        ip = self.client_ip
        literal = f"[IPv6:{ip}]" if ":" in ip else f"[{ip}]"  # RFC 5321 §4.1.3 address literals
        head = f"Received: from {self.helo or 'unknown'} ({literal})\r\n"
        head += f"\tby {self.cfg.hostname} (fastmta) with {proto} id "
        tail = ""
        if self.tls:
            version, _, cipher = self.tls.partition(" ")
            tail = f"\r\n\t(using {version} with cipher {cipher})"
        return head, tail


# TABLE resolved to functions once, indexed by state: one list index and one dict
# lookup per command on the hot path.
_HANDLERS: list[dict[bytes, Callable[..., Action | None]]] = [
    {verb: getattr(Session, name) for verb, name in TABLE.get(state, {}).items()}
    for state in range(S_CLOSED + 1)
]
