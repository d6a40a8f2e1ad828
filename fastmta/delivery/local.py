# SPDX-License-Identifier: MIT
"""Local delivery for ``[policy] local_domains``: the LocalDeliverer and local addresses.

Owns the mailbox end of the mail path: mapping a recipient address to a safe
mailbox name (never a path escape), the optional ``[local] users_file`` recipient
list (also the RCPT-time check), and the LocalDeliverer, which vets every
recipient, adds ``Return-Path:``/``Delivered-To:`` and hands the message to
``maildir.py`` (crash-safe writes) or ``lmtp.py`` (RFC 2033 client). Like every
deliverer it reads the body itself, never raises, and turns every failure into a
per-recipient Deferred/Bounced outcome: a full disk defers, it never loses mail.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import socket
import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from fastmta.config import Config
from fastmta.delivery import Attempt, BodySource, Destination, replies
from fastmta.delivery.classify import failure_outcome
from fastmta.delivery.lmtp import LmtpClient
from fastmta.delivery.loops import too_many_hops
from fastmta.delivery.maildir import maildir_host, maildir_write
from fastmta.errors import Bounced, Deferred, Delivered, Outcome, Reply

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


def _os_error_reply(e: OSError) -> Reply:
    """The reply for a failed Maildir write: a full disk or quota defers, never bounces."""
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


# --- the deliverer ------------------------------------------------------------------


class LocalDeliverer:
    """Delivers ``local`` destinations into Maildirs, or over LMTP when ``[local] lmtp`` is set."""

    def __init__(self, cfg: Config, spool: BodySource) -> None:
        self.spool = spool
        self._lmtp: LmtpClient | None = None
        self._pool: ThreadPoolExecutor  # Maildir writes, ``self._writers`` at once
        self._writers = 0
        self._retired: set[asyncio.Task[None]] = set()  # LMTP clients closing after a reload
        self.reload(cfg)

    def reload(self, cfg: Config) -> None:
        """Start-up, and SIGHUP: the next delivery uses the new Maildir root, modes, users
        file and LMTP target; deliveries in flight finish as they began. An LMTP target
        that changed (or went) has its idle sessions closed in the background."""
        self.cfg = cfg
        self._root = os.path.abspath(cfg.local.maildir)
        self._host = maildir_host(cfg.hostname or socket.gethostname())
        self._local_domains = frozenset(cfg.policy.local_domains)
        writers = max(1, min(8, cfg.delivery.max_connections_per_destination))
        if writers != self._writers:
            if self._writers:
                self._pool.shutdown(wait=False)  # its queued writes still finish
            self._pool = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="maildir")
            self._writers = writers
        old = self._lmtp
        if old is not None and old.target == cfg.local.lmtp:
            old.reload(cfg)
            return
        self._lmtp = LmtpClient(cfg) if cfg.local.lmtp else None
        if old is not None:
            task = asyncio.get_running_loop().create_task(old.close())
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)

    async def deliver(self, dest: Destination, envelope: Envelope, rcpts: list[int]) -> Attempt:
        start = time.monotonic()
        attempt = Attempt(nexthop=self._lmtp.nexthop if self._lmtp is not None else "maildir")
        try:
            body = self.spool.body(envelope.id)
            looped = None if body is None else too_many_hops(body, self.cfg.limits.max_hops)
            if body is None:
                attempt.outcomes = {i: Deferred(replies.NO_BODY, "other") for i in rcpts}
            elif looped is not None:  # Delivered-To: fields count: a .forward or alias loop
                attempt.outcomes = dict.fromkeys(rcpts, looped)
            elif self._lmtp is not None:
                attempt.outcomes = await self._deliver_lmtp(self._lmtp, envelope, rcpts, body)
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
        sender = _header_safe(envelope.sender)
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
                outcomes[i] = Bounced(R_LOOP, "loop")
                continue
            box = os.path.join(self._root, *checked)
            parts = (return_path, b"Delivered-To: " + raw + b"\n", text)
            local = self.cfg.local
            write = loop.run_in_executor(self._pool, maildir_write, box, self._host, parts, local.mode,
                                         local.dir_mode, local.owner)  # fmt: skip
            jobs.append((i, write))
        for i, job in jobs:
            try:
                await job
                outcomes[i] = Delivered(R_DELIVERED)
            except OSError as e:
                log.warning("maildir delivery of %s failed: %s", envelope.id, e)
                outcomes[i] = failure_outcome(_os_error_reply(e))
            except Exception:  # never let one recipient's failure redo the others' deliveries
                log.exception("maildir delivery of %s failed", envelope.id)
                outcomes[i] = Deferred(R_LOCAL_ERROR, "other")
        return outcomes

    async def _deliver_lmtp(
        self, lmtp: LmtpClient, envelope: Envelope, rcpts: list[int], body: bytes
    ) -> dict[int, Outcome]:
        outcomes: dict[int, Outcome] = {}
        todo = []
        for i in rcpts:
            addr = envelope.rcpts[i].addr
            checked = self._check(addr)
            if isinstance(checked, tuple):
                todo.append((i, addr))
            else:
                outcomes[i] = checked
        if todo:
            sender = _header_safe(envelope.sender)  # never a second command line
            outcomes.update(await lmtp.deliver(envelope.id, sender, envelope.params or {}, todo, body))
        return outcomes

    async def hang_up(self, key: str, keep: int = 0) -> int:
        """Local delivery is this node's own: no cluster lease covers it, nothing to close."""
        return 0

    async def close(self) -> None:
        if self._lmtp is not None:
            await self._lmtp.close()
        if self._retired:
            await asyncio.wait(list(self._retired))
        self._pool.shutdown(wait=True)


def _header_safe(text: str) -> str:
    """``text`` without control characters, whatever the spool holds: it goes into a header
    line or an LMTP command and must not be able to start another one."""
    return _CONTROL_RE.sub("", text)
