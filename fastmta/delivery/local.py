# SPDX-License-Identifier: MIT
"""Local delivery for ``[policy] local_domains``: Maildir, or LMTP to an MDA.

Owns the mailbox end of the mail path: mapping a recipient address to a safe
mailbox name (never a path escape), the optional ``[local] users_file`` recipient
list, crash-safe Maildir writes (tmp/, fsync, rename into new/, fsync the
directory) and an RFC 2033 LMTP client with per-recipient replies. Like every
deliverer it reads the body itself, never raises, and turns every failure into a
per-recipient Deferred/Bounced outcome: a full disk defers, it never loses mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import re
import secrets
import socket
import time
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

from fastmta import metrics
from fastmta.config import Config, parse_hostport
from fastmta.delivery import Attempt, Destination, replies
from fastmta.delivery.classify import classify
from fastmta.delivery.client import parse_ehlo, to_reply
from fastmta.errors import Bounced, Deferred, Delivered, Outcome, Reply
from fastmta.parser import ReplyParser, encode_data

if TYPE_CHECKING:
    from fastmta.spool.records import Envelope

log = logging.getLogger(__name__)

R_DELIVERED = Reply(250, "2.0.0", "Delivered to mailbox")
R_NO_USER = Reply(550, "5.1.1", "Mailbox does not exist")
R_BAD_MAILBOX = Reply(550, "5.1.3", "Bad destination mailbox address syntax")
R_NOT_LOCAL = Reply(550, "5.1.2", "Domain is not local")
R_LOOP = Reply(554, "5.4.6", "Mail forwarding loop detected")
R_DISK_FULL = Reply(452, "4.3.1", "Insufficient system storage")
R_QUOTA = Reply(452, "4.2.2", "Mailbox full")
R_LOCAL_ERROR = Reply(451, "4.3.0", "Local delivery failed temporarily")
R_USERS_UNREADABLE = Reply(451, "4.3.0", "Recipient list temporarily unavailable")
R_LMTP_DOWN = Reply(421, "4.4.1", "LMTP server unavailable")


class SpoolReader(Protocol):
    def body(self, msg_id: str) -> bytes | None: ...


# --- addresses and the recipient list ---------------------------------------------

_MAX_USER_BYTES = 64  # RFC 5321 §4.5.3.1.1
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_DOMAIN_RE = re.compile(r"^[^./\\\x00-\x20\x7f][^/\\\x00-\x20\x7f]*$")


def split_address(addr: str) -> tuple[str, str]:
    """``local@domain`` → (local part as written, domain); no ``@`` → (addr, "")."""
    at = addr.rfind("@")
    return (addr, "") if at < 0 else (addr[:at], addr[at + 1 :])


def normalise_user(local: str) -> str | None:
    """The mailbox name of a local part, or None when it is unsafe or malformed.

    ``user+tag`` → ``user``; an unquoted local part is case-folded (mailboxes are
    case-insensitive in practice, RFC 5321 §2.4 lets the receiver decide); a
    quoted one keeps its case; UTF-8 names are NFC-normalised. The result is a
    single path component: no ``/``, no ``..``, no leading dot, no NUL or control
    characters.
    """
    if len(local) >= 2 and local[0] == '"' and local[-1] == '"':
        user = re.sub(r"\\(.)", r"\1", local[1:-1])
    else:
        user = local.lower()
    user = unicodedata.normalize("NFC", user.split("+", 1)[0])  # one mailbox per name (RFC 6532 §3.1)
    if (
        not user
        or user[0] == "."
        or ".." in user
        or "/" in user
        or any(c < " " or c == "\x7f" for c in user)
        or len(user.encode("utf-8", "surrogateescape")) > _MAX_USER_BYTES
    ):
        return None
    return user


def mailbox_of(addr: str) -> tuple[str, str] | None:
    """(domain, user) of a recipient address, both safe as path components; None if unsafe.

    Control characters anywhere (the ``+tag`` too) refuse it: the address goes into
    a ``Delivered-To:`` line and must not be able to add header lines of its own.
    """
    if _CONTROL_RE.search(addr):
        return None
    local, domain = split_address(addr)
    domain = domain.lower().rstrip(".")
    user = normalise_user(local)
    if user is None or not _DOMAIN_RE.match(domain) or ".." in domain:
        return None
    return domain, user


class _UsersFile:
    """The parsed ``[local] users_file``, re-read when the file changes (cheap stat per lookup)."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[tuple[int, int, int], frozenset[str]]] = {}

    def entries(self, path: str) -> frozenset[str] | None:
        """Normalised entries (``user`` or ``user@domain``); None when unreadable."""
        try:
            st = os.stat(path)
            key = (st.st_mtime_ns, st.st_size, st.st_ino)
            cached = self._cache.get(path)
            if cached is not None and cached[0] == key:
                return cached[1]
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
        except OSError as e:
            log.warning("local.users_file %s unreadable: %s", path, e.strerror)
            return None
        found = set()
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            local, domain = split_address(line)
            user = normalise_user(local)
            if user is not None:
                found.add(f"{user}@{domain.lower().rstrip('.')}" if domain else user)
        entries = frozenset(found)
        self._cache[path] = (key, entries)
        return entries


_users = _UsersFile()


def _user_listed(cfg: Config, domain: str, user: str) -> bool | None:
    """Whether this mailbox may receive: listed in ``users_file`` (if set) and, with
    ``require_mailbox`` (Maildir only), its directory exists. None: the list is unreadable."""
    local = cfg.local
    if user == "postmaster":  # RFC 5321 §4.5.1: always accepted
        return True
    if (  # mailboxes made by the admin or an MDA; one stat
        local.require_mailbox
        and not local.lmtp
        and not os.path.isdir(os.path.join(local.maildir, domain, user, "new"))
    ):
        return False
    if not local.users_file:
        return True
    entries = _users.entries(cfg.local.users_file)
    if entries is None:
        return None
    return user in entries or f"{user}@{domain}" in entries


def local_recipient_exists(cfg: Config, addr: str) -> bool:
    """Whether a local-domain address has a mailbox: the RCPT-time check (550 5.1.1 when False).

    Pure apart from reading ``[local] users_file`` (cached by mtime) and, with
    ``[local] require_mailbox``, one stat of the Maildir. With neither every safe
    address exists (its Maildir is created on first delivery). An unreadable users
    file answers True so RCPT accepts, and delivery then defers with 451 4.3.0
    until the file is readable again: mail is queued, never lost, never put in a
    mailbox nobody vetted.
    """
    box = mailbox_of(addr)
    if box is None:
        return False
    return _user_listed(cfg, *box) is not False


# --- Maildir -----------------------------------------------------------------------

_seq = itertools.count()
_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def _maildir_host(hostname: str) -> str:
    # Maildir spec: "/" and ":" in the host part are written as \057 and \072.
    return hostname.replace("/", "\\057").replace(":", "\\072")


def unique_name(host: str, size: int) -> str:
    """A Maildir file name unique across processes, threads and restarts.

    ``<sec>.M<usec>P<pid>Q<seq>R<random>.<host>,S=<size>`` (the Dovecot form):
    time + pid + per-process counter distinguish writers on one host, 64 random
    bits cover pid reuse and clock steps; O_EXCL on tmp/ catches the impossible.
    """
    now = time.time()
    sec = int(now)
    usec = int((now - sec) * 1_000_000)
    return f"{sec}.M{usec}P{os.getpid()}Q{next(_seq)}R{secrets.token_hex(8)}.{host},S={size}"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_maildir(box: str) -> None:
    """Create ``box/{new,cur,tmp}`` (0700) durably, ``tmp/`` last.

    Writers start in ``tmp/``, so once it exists everything a delivery needs
    (``new/``, and every directory entry above it, fsync'd) exists too: a
    concurrent writer never renames into a missing ``new/``, and a crash never
    loses a mailbox that already reported a delivery.
    """
    parent = os.path.dirname(box)
    root = os.path.dirname(parent)
    os.makedirs(root, 0o700, exist_ok=True)
    dirty = set()
    for path in (parent, box, os.path.join(box, "new"), os.path.join(box, "cur")):
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
            dirty.add(os.path.dirname(path))
    for path in sorted(dirty, key=len, reverse=True):
        _fsync_dir(path)
    with contextlib.suppress(FileExistsError):
        os.mkdir(os.path.join(box, "tmp"), 0o700)
        _fsync_dir(box)


def maildir_write(box: str, host: str, parts: Sequence[bytes]) -> str:
    """Write one message into Maildir ``box`` durably; return its path in new/.

    The file is complete and fsync'd in tmp/ before the rename makes it visible
    in new/, and new/ is fsync'd so the rename survives a crash (Maildir spec;
    a reader never sees a partial message). Raises OSError.
    """
    size = sum(len(p) for p in parts)
    tmp_dir, new_dir = os.path.join(box, "tmp"), os.path.join(box, "new")
    for _ in range(100):
        name = unique_name(host, size)
        tmp = os.path.join(tmp_dir, name)
        try:
            fd = os.open(tmp, _O_NEW, 0o600)
        except FileNotFoundError:
            _make_maildir(box)
            continue
        except FileExistsError:
            continue
        break
    else:
        raise OSError(errno.EEXIST, "no unique Maildir name")
    try:
        try:
            views = [memoryview(p) for p in parts if p]
            while views:
                n = os.writev(fd, views)
                while views and n >= len(views[0]):
                    n -= len(views.pop(0))
                if n:
                    views[0] = views[0][n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        new = os.path.join(new_dir, name)
        os.rename(tmp, new)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(new_dir)
    return new


def _os_error_reply(e: OSError) -> Reply:
    if e.errno in (errno.ENOSPC, errno.EFBIG):  # EFBIG: a file-size limit (RLIMIT_FSIZE) hit
        return R_DISK_FULL
    if e.errno == getattr(errno, "EDQUOT", -1):
        return R_QUOTA
    return R_LOCAL_ERROR


def _header_values(head: bytes, name: bytes) -> set[bytes]:
    """Lower-cased values of one header field in a header block (unfolded lines are enough here)."""
    prefix = name.lower() + b":"
    return {
        line[len(prefix) :].strip().lower()
        for line in head.split(b"\n")
        if line[: len(prefix)].lower() == prefix
    }


# --- LMTP ---------------------------------------------------------------------------


def _ok(reply: Reply) -> bool:
    return 200 <= reply.code < 300


def _outcome(reply: Reply) -> Outcome:
    if 200 <= reply.code < 300:
        return Delivered(reply)
    if reply.code >= 500:
        return Bounced(reply, classify(reply))
    return Deferred(reply, classify(reply))


class _LmtpClosed(Exception):
    """The LMTP server went away before a reply."""


class _LmtpConnection:
    """One LMTP session (after LHLO); ``used`` counts transactions for the reuse cap."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float):
        self.reader, self.writer, self.timeout = reader, writer, timeout
        self._parser = ReplyParser()
        self._ready: list[tuple[int, list[bytes]]] = []
        self.ext: dict[str, str] = {}
        self.used = 0
        self.idle_since = 0.0
        self._active: Any = metrics.bound(metrics.destination_connections_active)
        self._active.inc()

    async def raw_reply(self) -> tuple[int, list[bytes]]:
        while not self._ready:
            data = await asyncio.wait_for(self.reader.read(65536), self.timeout)
            if not data:
                raise _LmtpClosed
            self._ready.extend(self._parser.feed(data))
        return self._ready.pop(0)

    async def reply(self) -> Reply:
        return to_reply(*await self.raw_reply())

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), self.timeout)

    def alive(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing() and not self._ready

    def abort(self) -> None:
        """Close without QUIT; the active-connections gauge counts each connection once."""
        if self._active is not None:
            self._active.dec()
            self._active = None
        self.writer.close()

    async def close(self, quit: bool = True) -> None:
        if quit and not self.writer.is_closing():
            with contextlib.suppress(Exception):
                await self.send(b"QUIT\r\n")
                await asyncio.wait_for(self.reply(), 1.0)
        self.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)


def _lmtp_target(spec: str) -> tuple[str | None, tuple[str, int] | None, str]:
    """``"unix:/path"`` or ``"host:port"`` → (unix path, (host, port), nexthop label)."""
    if spec.startswith("unix:"):
        return spec[5:], None, f"lmtp:{spec}"
    host, port = parse_hostport(spec)
    return None, (host, port), f"lmtp:[{host}]:{port}"


# --- the deliverer ------------------------------------------------------------------


class LocalDeliverer:
    """Delivers ``local`` destinations into Maildirs, or over LMTP when ``[local] lmtp`` is set."""

    def __init__(self, cfg: Config, spool: SpoolReader) -> None:
        self.cfg = cfg
        self.spool = spool
        self._root = os.path.abspath(cfg.local.maildir)
        self._host = _maildir_host(cfg.hostname or socket.gethostname())
        self._local_domains = frozenset(cfg.policy.local_domains)
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, min(8, cfg.delivery.max_connections_per_destination)),
            thread_name_prefix="maildir",
        )
        self._lmtp_unix, self._lmtp_addr, self._lmtp_label = (
            _lmtp_target(cfg.local.lmtp) if cfg.local.lmtp else (None, None, "maildir")
        )
        self._idle: list[_LmtpConnection] = []
        self._quitting: set[asyncio.Task[None]] = set()  # QUITs in flight (kept: tasks are weak)

    async def deliver(self, dest: Destination, envelope: Envelope, rcpts: list[int]) -> Attempt:
        start = time.monotonic()
        attempt = Attempt(nexthop=self._lmtp_label)
        try:
            body = self.spool.body(envelope.id)
            if body is None:
                attempt.outcomes = {i: Deferred(replies.NO_BODY, "other") for i in rcpts}
            elif self.cfg.local.lmtp:
                attempt.outcomes = await self._deliver_lmtp(envelope, rcpts, body)
            else:
                attempt.outcomes = await self._deliver_maildir(envelope, rcpts, body)
        except Exception:
            log.exception("local delivery of %s failed", envelope.id)
            attempt.outcomes = {i: Deferred(R_LOCAL_ERROR, "other") for i in rcpts}
        for i in rcpts:  # every index gets an outcome, whatever happened above
            attempt.outcomes.setdefault(i, Deferred(R_LOCAL_ERROR, "other"))
        attempt.elapsed = time.monotonic() - start
        return attempt

    def _check(self, addr: str) -> tuple[str, str] | Outcome:
        """(domain, user) of a deliverable recipient, or the outcome that refuses it."""
        box = mailbox_of(addr)
        if box is None:
            return Bounced(R_BAD_MAILBOX, "invalid_recipient")
        if box[0] not in self._local_domains:
            return Bounced(R_NOT_LOCAL, "bad_domain")
        listed = _user_listed(self.cfg, *box)
        if listed is None:
            return Deferred(R_USERS_UNREADABLE, "other")
        if not listed:
            return Bounced(R_NO_USER, "invalid_recipient")
        return box

    async def _deliver_maildir(self, envelope: Envelope, rcpts: list[int], body: bytes) -> dict[int, Outcome]:
        # Maildir files use LF line ends (qmail, Postfix local, Dovecot all read them).
        text = body.replace(b"\r\n", b"\n")
        end = text.find(b"\n\n")
        seen = _header_values(text if end < 0 else text[: end + 1], b"Delivered-To")
        sender = _CONTROL_RE.sub("", envelope.sender)  # header-safe, whatever the spool holds
        return_path = b"Return-Path: <" + sender.encode("utf-8", "surrogateescape") + b">\n"
        loop = asyncio.get_running_loop()
        outcomes: dict[int, Outcome] = {}
        jobs = []
        for i in rcpts:
            addr = envelope.rcpts[i].addr
            checked = self._check(addr)
            if not isinstance(checked, tuple):
                outcomes[i] = checked
                continue
            raw = addr.encode("utf-8", "surrogateescape")
            if raw.lower() in seen:
                outcomes[i] = Bounced(R_LOOP, "other")
                continue
            box = os.path.join(self._root, *checked)
            parts = (return_path, b"Delivered-To: " + raw + b"\n", text)
            jobs.append((i, loop.run_in_executor(self._pool, maildir_write, box, self._host, parts)))
        for i, job in jobs:
            try:
                await job
                outcomes[i] = Delivered(R_DELIVERED)
            except OSError as e:
                log.warning("maildir delivery of %s failed: %s", envelope.id, e)
                reply = _os_error_reply(e)
                outcomes[i] = Deferred(reply, classify(reply))
            except Exception:  # never let one recipient's failure redo the others' deliveries
                log.exception("maildir delivery of %s failed", envelope.id)
                outcomes[i] = Deferred(R_LOCAL_ERROR, "other")
        return outcomes

    # LMTP (RFC 2033): like SMTP, but one reply per accepted recipient after the data.

    async def _connect(self) -> _LmtpConnection:
        timeout = self.cfg.delivery.connect_timeout
        if self._lmtp_unix is not None:
            opening = asyncio.open_unix_connection(self._lmtp_unix)
        else:
            assert self._lmtp_addr is not None
            opening = asyncio.open_connection(*self._lmtp_addr)
        attempts = metrics.delivery_connections_total
        try:
            reader, writer = await asyncio.wait_for(opening, timeout)
        except TimeoutError:
            metrics.bound(attempts, "timeout").inc()
            raise
        except OSError:
            metrics.bound(attempts, "refused").inc()
            raise
        conn = _LmtpConnection(reader, writer, self.cfg.delivery.command_timeout)
        try:
            greeting = await conn.reply()
            if greeting.code != 220:
                raise _Refused(greeting)
            await conn.send(b"LHLO " + self.cfg.hostname.encode("utf-8") + b"\r\n")
            code, lines = await conn.raw_reply()
            if code != 250:
                raise _Refused(to_reply(code, lines))
        except BaseException:
            metrics.bound(attempts, "greeting").inc()
            await conn.close(quit=False)
            raise
        metrics.bound(attempts, "ok").inc()
        conn.ext = parse_ehlo(lines)
        return conn

    def _take_idle(self) -> _LmtpConnection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.alive() and now - conn.idle_since < self.cfg.delivery.idle_timeout:
                return conn
            conn.abort()
        return None

    async def _deliver_lmtp(self, envelope: Envelope, rcpts: list[int], body: bytes) -> dict[int, Outcome]:
        outcomes: dict[int, Outcome] = {}
        todo = []
        for i in rcpts:
            checked = self._check(envelope.rcpts[i].addr)
            if isinstance(checked, tuple):
                todo.append(i)
            else:
                outcomes[i] = checked
        if not todo:
            return outcomes
        for reused in (True, False):
            conn = self._take_idle() if reused else None
            if reused and conn is None:
                continue
            try:
                if conn is None:
                    conn = await self._connect()
                await self._transaction(conn, envelope, todo, body, reused, outcomes)
            except _Stale:
                await _drop(conn)
                continue  # the idle connection had died: one retry on a fresh one
            except Exception as e:
                await _drop(conn)
                failed = _failure_outcome(e, connected=conn is not None)
                log.warning("LMTP %s: %s: %r", self._lmtp_label, envelope.id, e)
                outcomes.update({i: failed for i in todo if i not in outcomes})
            else:
                self._release(conn)
            break
        return outcomes

    def _release(self, conn: _LmtpConnection) -> None:
        conn.used += 1
        if conn.used >= self.cfg.delivery.max_messages_per_connection or not conn.alive():
            task = asyncio.get_running_loop().create_task(conn.close())
            self._quitting.add(task)
            task.add_done_callback(self._quitting.discard)
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    async def _transaction(
        self, conn: _LmtpConnection, envelope: Envelope, todo: list[int], body: bytes, stale_ok: bool,
        outcomes: dict[int, Outcome],
    ) -> None:  # fmt: skip
        """MAIL, RCPT…, DATA, then one reply per accepted recipient (RFC 2033 §4.2).

        Outcomes go into ``outcomes`` as replies arrive, so a connection lost after
        some per-recipient replies keeps those (no duplicate for a delivered one).
        """
        params = envelope.params or {}
        sender = _CONTROL_RE.sub("", envelope.sender)  # never a second command line
        mail = b"MAIL FROM:<" + sender.encode("utf-8", "surrogateescape") + b">"
        if params.get("BODY") and "8BITMIME" in conn.ext:
            mail += b" BODY=" + str(params["BODY"]).encode()
        if "SMTPUTF8" in params and "SMTPUTF8" in conn.ext:
            mail += b" SMTPUTF8"
        commands = [mail + b"\r\n"]
        commands += [b"RCPT TO:<" + envelope.rcpts[i].addr.encode("utf-8", "surrogateescape") + b">\r\n"
                     for i in todo]  # fmt: skip
        # RFC 2033 §4.1 makes PIPELINING mandatory for LMTP servers; fall back anyway.
        pipelined = "PIPELINING" in conn.ext
        await conn.send(b"".join(commands) + b"DATA\r\n" if pipelined else commands[0])
        try:
            mail_reply = await conn.reply()
        except (_LmtpClosed, ConnectionError):
            if stale_ok:
                raise _Stale from None
            raise
        if stale_ok and mail_reply.code == 421:  # the server timed the idle session out
            raise _Stale
        accepted: list[int] = []
        for n, i in enumerate(todo):
            if not _ok(mail_reply):
                outcomes[i] = _outcome(mail_reply)
                continue
            if not pipelined:
                await conn.send(commands[n + 1])
            rcpt_reply = await conn.reply()
            if _ok(rcpt_reply):
                accepted.append(i)
            else:
                outcomes[i] = _outcome(rcpt_reply)
        if pipelined:
            if not _ok(mail_reply):
                for _ in todo:  # the RCPT replies after a refused MAIL
                    await conn.reply()
        elif not accepted:
            return
        else:
            await conn.send(b"DATA\r\n")
        data_reply = await conn.reply()
        if data_reply.code != 354:
            outcomes.update({i: _outcome(data_reply) for i in accepted})
            return
        await conn.send(encode_data(body))
        if not accepted:  # a server that said 354 with no valid recipient: finish cleanly
            await conn.reply()
            return
        for i in accepted:
            outcomes[i] = _outcome(await conn.reply())

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        await asyncio.gather(*(c.close() for c in idle), *self._quitting, return_exceptions=True)
        self._pool.shutdown(wait=True)


async def _drop(conn: _LmtpConnection | None) -> None:
    if conn is not None:
        await conn.close(quit=False)


def _failure_outcome(e: Exception, connected: bool) -> Outcome:
    """The outcome for the recipients still open when the LMTP session failed with ``e``."""
    if isinstance(e, _Refused):
        return _outcome(e.reply)
    if isinstance(e, TimeoutError):
        return Deferred(replies.TIMEOUT, "timeout")
    if isinstance(e, (OSError, _LmtpClosed)):
        return Deferred(replies.CONNECTION_LOST if connected else R_LMTP_DOWN, "connection")
    return Deferred(replies.PROTOCOL, "other")  # ParserError: not an LMTP server


class _Refused(Exception):
    """The LMTP server refused the session (greeting or LHLO not accepted)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


class _Stale(Exception):
    """A reused idle LMTP connection turned out dead before the first reply."""
