# SPDX-License-Identifier: MIT
"""Crash-safe Maildir writes: unique names, the message in tmp/, fsync, rename into new/.

Owns only the filesystem side of a Maildir delivery: creating a mailbox durably,
naming files uniquely across processes and restarts, and making a message visible
in new/ only once it is complete and on disk. It knows nothing of addresses,
headers or SMTP replies; every failure is an OSError for the caller to map.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import secrets
import time
from collections.abc import Sequence

_seq = itertools.count()
FILE_MODE = 0o600  # the defaults of ``[local] mode``: only the delivering user reads the mail
DIR_MODE = 0o700
_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def maildir_host(hostname: str) -> str:
    """The host part of a Maildir file name (Maildir spec: "/" and ":" written as \\057, \\072)."""
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


Owner = tuple[int, int] | None  # (uid, gid) for what is created; None: the writing process's


def _mkdir(path: str, mode: int, owner: Owner = None) -> bool:
    """Create one directory with exactly ``mode`` (the umask may not take group bits a
    reader needs) and ``owner``; False when it exists already (then it is left as it is)."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return False
    if mode != DIR_MODE:
        os.chmod(path, mode)
    if owner is not None:
        os.chown(path, *owner)
    return True


def _make_maildir(box: str, dir_mode: int = DIR_MODE, owner: Owner = None) -> None:
    """Create ``box/{new,cur,tmp}`` (``dir_mode``) durably, ``tmp/`` last.

    Writers start in ``tmp/``, so once it exists everything a delivery needs
    (``new/``, and every directory entry above it, fsync'd) exists too: a
    concurrent writer never renames into a missing ``new/``, and a crash never
    loses a mailbox that already reported a delivery.
    """
    parent = os.path.dirname(box)
    root = os.path.dirname(parent)
    if not os.path.isdir(root):
        os.makedirs(os.path.dirname(root) or ".", exist_ok=True)
        _mkdir(root, dir_mode, owner)
    dirty = set()
    for path in (parent, box, os.path.join(box, "new"), os.path.join(box, "cur")):
        if _mkdir(path, dir_mode, owner):
            dirty.add(os.path.dirname(path))
    for path in sorted(dirty, key=len, reverse=True):
        _fsync_dir(path)
    if _mkdir(os.path.join(box, "tmp"), dir_mode, owner):
        _fsync_dir(box)


def maildir_write(box: str, host: str, parts: Sequence[bytes], mode: int = FILE_MODE,
                  dir_mode: int = DIR_MODE, owner: Owner = None) -> str:  # fmt: skip
    """Write one message into Maildir ``box`` durably; return its path in new/.

    The file is complete and fsync'd in tmp/ before the rename makes it visible
    in new/, and new/ is fsync'd so the rename survives a crash (Maildir spec;
    a reader never sees a partial message). The file gets ``mode`` and new
    directories ``dir_mode``, whatever the umask, and both ``owner`` when given
    (before the rename: the reader never sees a file it cannot open). Raises OSError.
    """
    size = sum(len(p) for p in parts)
    tmp_dir, new_dir = os.path.join(box, "tmp"), os.path.join(box, "new")
    for _ in range(100):
        name = unique_name(host, size)
        tmp = os.path.join(tmp_dir, name)
        try:
            fd = os.open(tmp, _O_NEW, mode)
        except FileNotFoundError:
            _make_maildir(box, dir_mode, owner)
            continue
        except FileExistsError:
            continue
        break
    else:
        raise OSError(errno.EEXIST, "no unique Maildir name")
    try:
        try:
            if mode != FILE_MODE:
                os.fchmod(fd, mode)
            if owner is not None:
                os.fchown(fd, *owner)
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
