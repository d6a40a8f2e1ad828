# SPDX-License-Identifier: MIT
"""Local delivery units: mailbox names (never a path escape), the users file, Maildir writes,
and LocalDeliverer's Maildir outcomes against a fake spool reader."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import errno
import grp
import os
import pwd
import stat
import threading
from pathlib import Path

import pytest

from fastmta import config
from fastmta.delivery import Destination
from fastmta.delivery.local import (
    LocalDeliverer,
    _os_error_reply,
    local_recipient_exists,
    mailbox_of,
    normalise_user,
)
from fastmta.delivery.maildir import maildir_write, unique_name
from fastmta.errors import Bounced, Deferred, Delivered
from fastmta.spool.records import Envelope, Recipient
from tests.fixtures.spool import BodySpool

LOCAL = Destination("local", "local.test")
BODY = b"From: a@x.test\r\nTo: bob@local.test\r\nSubject: hi\r\n\r\nline 1\r\n.dot line\r\n"


def make_cfg(tmp_path: Path, **local: str | bool) -> config.Config:
    raw = {
        "hostname": "mx.fastmta.test",
        "policy": {"local_domains": ["local.test", "other.test"]},
        "local": {"maildir": str(tmp_path / "mail"), **local},
        "metrics": {"address": ""},
    }
    return config.from_dict(raw)


def envelope(*rcpts: str, sender: str = "a@x.test", msg_id: str = "M1") -> Envelope:
    return Envelope(msg_id, sender, [Recipient(r) for r in rcpts])


def deliver(cfg: config.Config, env: Envelope, body: bytes = BODY) -> dict[int, object]:
    async def run() -> dict[int, object]:
        d = LocalDeliverer(cfg, BodySpool({env.id: body}))
        try:
            attempt = await asyncio.wait_for(d.deliver(LOCAL, env, list(range(len(env.rcpts)))), 10)
        finally:
            await d.close()
        assert attempt.nexthop == "maildir" and attempt.elapsed >= 0
        return dict(attempt.outcomes)

    return asyncio.run(run())


def messages(box: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((box / "new").iterdir())]


# --- names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("local", "user"),
    [
        ("Bob", "bob"),
        ("bob+lists", "bob"),
        ("Bob+Tag+more", "bob"),
        ('"Bob.Smith"', "Bob.Smith"),
        ('"a\\"b"', 'a"b'),
        ("first.last", "first.last"),
        ("x" * 64, "x" * 64),
        ("Jo\u0308rg", "j\u00f6rg"),  # decomposed umlaut: the same mailbox as the composed one
        ("J\u00d6RG", "j\u00f6rg"),
        ("",  None),
        ("+tag", None),
        (".hidden", None),
        ("..", None),
        ("a..b", None),
        ("../etc", None),
        ("a/b", None),
        ('"../../etc/passwd"', None),
        ('"a/b"', None),
        ("a\x00b", None),
        ("a\nb", None),
        ("x" * 65, None),
    ],
)  # fmt: skip
def test_normalise_user(local: str, user: str | None) -> None:
    assert normalise_user(local) == user


@pytest.mark.parametrize(
    "addr",
    ["bob@../x", "bob@a/b", "bob@.local.test", "bob@", "bob@a..b", "bob@lo\x00cal.test", "nobody",
     "bob+x\r\nX-Evil: 1@local.test", "bob+\x7f@local.test"],
)  # fmt: skip
def test_mailbox_of_refuses_unsafe_domains(addr: str) -> None:
    assert mailbox_of(addr) is None


def test_mailbox_of_folds_domain_case() -> None:
    assert mailbox_of("Bob+x@Local.TEST.") == ("local.test", "bob")


def test_unique_names_differ_across_threads() -> None:
    names: list[str] = []

    def make() -> None:
        names.extend(unique_name("h", 1) for _ in range(2000))

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(names)) == 8000
    assert all("/" not in n and ":" not in n for n in names)


# --- users file ----------------------------------------------------------------------


def test_users_file_lists_local_parts_and_addresses(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("# mailboxes\nalice\nBob@other.test  # only there\n\n")
    cfg = make_cfg(tmp_path, users_file=str(users))
    assert local_recipient_exists(cfg, "alice@local.test")
    assert local_recipient_exists(cfg, "ALICE+news@other.test")
    assert local_recipient_exists(cfg, "bob@other.test")
    assert not local_recipient_exists(cfg, "bob@local.test")
    assert not local_recipient_exists(cfg, "carol@local.test")
    assert local_recipient_exists(cfg, "Postmaster@local.test")  # RFC 5321 §4.5.1
    assert not local_recipient_exists(cfg, "../alice@local.test")


def test_users_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("alice\n")
    cfg = make_cfg(tmp_path, users_file=str(users))
    assert not local_recipient_exists(cfg, "carol@local.test")
    users.write_text("alice\ncarol\n")
    st = users.stat()
    os.utime(users, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert local_recipient_exists(cfg, "carol@local.test")


def test_without_users_file_every_safe_address_exists(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    assert local_recipient_exists(cfg, "anyone@local.test")
    assert not local_recipient_exists(cfg, ".x@local.test")


def test_require_mailbox_accepts_only_existing_maildirs(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, require_mailbox=True)
    (tmp_path / "mail" / "local.test" / "bob" / "new").mkdir(parents=True)
    assert local_recipient_exists(cfg, "Bob+x@local.test")
    assert not local_recipient_exists(cfg, "eve@local.test")
    assert local_recipient_exists(cfg, "postmaster@local.test")
    out = deliver(cfg, envelope("bob@local.test", "eve@local.test"))
    assert isinstance(out[0], Delivered)
    assert isinstance(out[1], Bounced) and out[1].reply.enhanced == "5.1.1"
    assert not (tmp_path / "mail" / "local.test" / "eve").exists()


def test_unreadable_users_file_accepts_at_rcpt_and_defers_at_delivery(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, users_file=str(tmp_path / "missing"))
    assert local_recipient_exists(cfg, "alice@local.test")
    out = deliver(cfg, envelope("alice@local.test"))
    assert isinstance(out[0], Deferred) and out[0].reply.code == 451
    assert not (tmp_path / "mail").exists()


# --- maildir_write -----------------------------------------------------------------------


def test_maildir_write_creates_private_dirs_and_moves_into_new(tmp_path: Path) -> None:
    box = tmp_path / "mail" / "local.test" / "bob"
    path = maildir_write(str(box), "mx.test", [b"a", b"", b"bc" * 100_000])
    assert Path(path).parent == box / "new"
    assert Path(path).read_bytes() == b"a" + b"bc" * 100_000
    assert Path(path).name.endswith(f",S={1 + 200_000}")
    for sub in ("tmp", "new", "cur"):
        assert stat.S_IMODE((box / sub).stat().st_mode) == 0o700
    assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600
    assert list((box / "tmp").iterdir()) == []


def test_local_mode_applies_whatever_the_umask(tmp_path: Path) -> None:
    """[local] mode = "0640": files 0640 and every directory fastmta creates 0750, even under
    umask 077, so a reader in the group (Dovecot) can open them; existing ones are left alone."""
    (tmp_path / "mail").mkdir(mode=0o711)
    local = config.from_dict({"local": {"mode": "0640"}}).local
    box = tmp_path / "mail" / "local.test" / "bob"
    old = os.umask(0o077)
    try:
        path = maildir_write(str(box), "h", [b"x"], local.mode, local.dir_mode)
        again = maildir_write(str(box), "h", [b"y"], local.mode, local.dir_mode)
    finally:
        os.umask(old)
    for p in (path, again):
        assert stat.S_IMODE(Path(p).stat().st_mode) == 0o640
    for d in (box.parent, box, box / "tmp", box / "new", box / "cur"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o750, d
    assert stat.S_IMODE((tmp_path / "mail").stat().st_mode) == 0o711


def test_local_owner_gets_the_files_and_the_directories_fastmta_creates(tmp_path: Path) -> None:
    """[local] owner = "nobody:nogroup" (the tests run as root): the message file and every
    directory made for it belong to that user; an existing Maildir root is left alone."""
    (tmp_path / "mail").mkdir()
    local = config.from_dict({"local": {"owner": "nobody:nogroup"}}).local
    nobody = (pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid)
    assert local.owner == nobody
    box = tmp_path / "mail" / "local.test" / "bob"
    path = maildir_write(str(box), "h", [b"x"], local.mode, local.dir_mode, local.owner)
    for p in (Path(path), box.parent, box, box / "tmp", box / "new", box / "cur"):
        assert (p.stat().st_uid, p.stat().st_gid) == nobody, p
    assert (tmp_path / "mail").stat().st_uid == os.geteuid()


def test_maildir_write_leaves_no_tmp_file_on_failure(tmp_path: Path) -> None:
    box = tmp_path / "box"
    maildir_write(str(box), "h", [b"x"])
    for p in (box / "new").iterdir():
        p.unlink()
    (box / "new").rmdir()
    (box / "new").write_bytes(b"")  # new/ is now a file: rename fails with ENOTDIR
    with pytest.raises(OSError):
        maildir_write(str(box), "h", [b"y"])
    assert list((box / "tmp").iterdir()) == []


def test_concurrent_writers_to_one_mailbox_never_collide(tmp_path: Path) -> None:
    box = str(tmp_path / "box")
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(25):
                maildir_write(box, "h", [f"writer {n} message {i}\n".encode()])
        except BaseException as e:  # pragma: no cover (reported below)
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    got = sorted(p.read_bytes() for p in (Path(box) / "new").iterdir())
    assert got == sorted(f"writer {n} message {i}\n".encode() for n in range(8) for i in range(25))


def _race_writer(box: str, barrier: threading.Barrier, errors: list[BaseException]) -> None:
    barrier.wait()
    try:
        maildir_write(box, "h", [b"x"])
    except BaseException as e:  # pragma: no cover (reported by the caller)
        errors.append(e)


def test_writers_racing_to_create_a_new_mailbox(tmp_path: Path) -> None:
    """Every writer that finds tmp/ must also find new/ (tmp/ is created last)."""
    for round_ in range(8):
        box = str(tmp_path / f"r{round_}" / "local.test" / "new-user")
        barrier = threading.Barrier(8)
        errors: list[BaseException] = []
        threads = [threading.Thread(target=_race_writer, args=(box, barrier, errors)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(os.listdir(os.path.join(box, "new"))) == 8


@pytest.mark.parametrize(
    ("code", "reply"),
    [(errno.ENOSPC, (452, "4.3.1")), (errno.EDQUOT, (452, "4.2.2")), (errno.EIO, (451, "4.3.0"))],
)
def test_os_errors_map_to_temporary_replies(code: int, reply: tuple[int, str]) -> None:
    r = _os_error_reply(OSError(code, os.strerror(code)))
    assert (r.code, r.enhanced) == reply


# --- LocalDeliverer (Maildir) -------------------------------------------------------------


def test_delivers_with_return_path_and_delivered_to(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    out = deliver(cfg, envelope("Bob+news@Local.test", "alice@other.test"))
    assert all(isinstance(o, Delivered) and o.reply.code == 250 for o in out.values())
    [bob] = messages(tmp_path / "mail" / "local.test" / "bob")
    assert bob.startswith(b"Return-Path: <a@x.test>\nDelivered-To: Bob+news@Local.test\nFrom: a@x.test\n")
    assert b"\r" not in bob  # Maildir files hold LF line ends
    parsed = email.message_from_bytes(bob)
    assert parsed["Subject"] == "hi" and parsed.get_payload() == "line 1\n.dot line\n"
    [alice] = messages(tmp_path / "mail" / "other.test" / "alice")
    assert b"Delivered-To: alice@other.test\n" in alice


def test_sender_cannot_inject_header_lines(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    deliver(cfg, envelope("bob@local.test", sender="a@x.test>\nX-Evil: 1\n<"))
    [msg] = messages(tmp_path / "mail" / "local.test" / "bob")
    assert msg.startswith(b"Return-Path: <a@x.test>X-Evil: 1<>\nDelivered-To: bob@local.test\n")


def test_null_sender_gets_empty_return_path(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    deliver(cfg, envelope("bob@local.test", sender=""))
    [msg] = messages(tmp_path / "mail" / "local.test" / "bob")
    assert msg.startswith(b"Return-Path: <>\n")


def test_unknown_user_bounces_5_1_1(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("bob\n")
    cfg = make_cfg(tmp_path, users_file=str(users))
    out = deliver(cfg, envelope("bob@local.test", "eve@local.test"))
    assert isinstance(out[0], Delivered)
    assert isinstance(out[1], Bounced)
    assert (out[1].reply.code, out[1].reply.enhanced) == (550, "5.1.1")
    assert out[1].bounce_class == "invalid_recipient"
    assert not (tmp_path / "mail" / "local.test" / "eve").exists()


def test_unsafe_and_foreign_recipients_bounce_without_touching_disk(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    out = deliver(cfg, envelope('"../../x"@local.test', "bob@elsewhere.test"))
    assert isinstance(out[0], Bounced) and out[0].reply.enhanced == "5.1.3"
    assert isinstance(out[1], Bounced) and out[1].reply.enhanced == "5.1.2"
    assert not (tmp_path / "mail").exists() and not (tmp_path / "x").exists()


def test_delivered_to_loop_bounces_5_4_6(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    looped = b"Delivered-To: bob@local.test\r\n" + BODY
    out = deliver(cfg, envelope("bob@local.test", "carol@local.test"), looped)
    assert isinstance(out[0], Bounced) and out[0].reply.enhanced == "5.4.6"
    assert isinstance(out[1], Delivered)


def test_missing_body_defers(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)

    async def run() -> object:
        d = LocalDeliverer(cfg, BodySpool({}))
        attempt = await d.deliver(LOCAL, envelope("bob@local.test"), [0])
        await d.close()
        return attempt.outcomes[0]

    out = asyncio.run(run())
    assert isinstance(out, Deferred) and out.reply.code == 451


def test_filesystem_failure_defers_and_loses_nothing(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    (tmp_path / "mail").mkdir()
    (tmp_path / "mail" / "local.test").write_text("not a directory")
    out = deliver(cfg, envelope("bob@local.test", "alice@other.test"))
    assert isinstance(out[0], Deferred) and (out[0].reply.code, out[0].reply.enhanced) == (451, "4.3.0")
    assert isinstance(out[1], Delivered)


def test_only_the_given_indexes_are_delivered(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    env = envelope("a@local.test", "b@local.test", "c@local.test")

    async def run() -> set[int]:
        d = LocalDeliverer(cfg, BodySpool({env.id: BODY}))
        attempt = await d.deliver(LOCAL, env, [0, 2])
        await d.close()
        return set(attempt.outcomes)

    assert asyncio.run(run()) == {0, 2}
    assert not (tmp_path / "mail" / "local.test" / "b").exists()


def test_config_hostname_used_in_file_names(tmp_path: Path) -> None:
    cfg = dataclasses.replace(make_cfg(tmp_path), hostname="a/b:c")
    deliver(cfg, envelope("bob@local.test"))
    [name] = os.listdir(tmp_path / "mail" / "local.test" / "bob" / "new")
    assert ".a\\057b\\072c," in name
