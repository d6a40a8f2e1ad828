# SPDX-License-Identifier: MIT
"""Hand a finished message to the queue: straight into the spool, or over SMTP.

Shared by ``fastmta sendmail`` (spool first, the local listener as fallback) and
``fastmta send`` (SMTP submission only). Failures become ``InjectError`` carrying
a sendmail exit status (sysexits.h), so callers map every outcome to one code.
Never logs or prints a password.
"""

from __future__ import annotations

import os
import re
import smtplib
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from fastmta.config import Config
from fastmta.smtp.commands import xtext_encode

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_NOUSER = 67
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_CANTCREAT = 73
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78

_QUEUED_RE = re.compile(r"(?:queued as |\bid=)([0-9A-Za-z][0-9A-Za-z._-]*)", re.IGNORECASE)
_ID_RE = re.compile(r"^(?=.*[0-9])[0-9A-Za-z][0-9A-Za-z._-]{5,}$")  # ids carry digits; words do not


Rcpt = tuple[str, str, str]  # (address, NOTIFY, ORCPT) as the SMTP session's Transaction holds them


class InjectError(Exception):
    """The message was not queued; ``status`` is the sendmail exit code to return."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def queue_id(reply: str) -> str:
    """The queue id in a final ``250`` text: ``2.0.0 Ok: queued as ID`` (ours, Postfix),
    ``OK id=ID`` (Exim), else a last word that looks like an id, else the whole text."""
    m = _QUEUED_RE.search(reply)
    if m:
        return m.group(1).rstrip(".")
    words = reply.split()
    if words and _ID_RE.match(words[-1].strip("<>[]().")):
        return words[-1].strip("<>[]().")
    return reply.strip()


# --- SMTP --------------------------------------------------------------------------


def local_endpoint(cfg: Config, mode: str = "relay") -> tuple[str, int, str]:
    """(host, port, tls) of the listener local injection talks to: the first one in ``mode``
    ("relay" needs no AUTH from loopback; "submission" for an authenticated client), else
    the first one; a wildcard bind becomes loopback, its implicit TLS is kept."""
    listener = next((lst for lst in cfg.listeners if lst.mode == mode), cfg.listeners[0])
    host, port = listener.address
    return connect_host(host), port, "implicit" if listener.tls == "implicit" else "none"


def connect_host(host: str) -> str:
    """A wildcard bind address names no host to connect to; use loopback instead."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


@dataclass(slots=True)
class SmtpTarget:
    host: str
    port: int
    tls: str = "none"  # "none" | "starttls" (required) | "implicit"
    verify: bool = True
    cafile: str | None = None
    auth: tuple[str, str] | None = None  # (user, password)
    helo: str = ""
    timeout: float = 60.0


@dataclass(slots=True)
class Submitted:
    queue_id: str
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)


def _tls_context(target: SmtpTarget) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=target.cafile)
    if not target.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _status_of(code: int, permanent: int) -> int:
    return EX_TEMPFAIL if code < 500 else permanent


def _text(resp: bytes | str) -> str:
    return resp.decode("utf-8", "replace") if isinstance(resp, bytes) else resp


def needs_smtputf8(sender: str, addrs: Iterable[str]) -> bool:
    """Does any envelope address carry non-ASCII (RFC 6531 SMTPUTF8)?"""
    return not (sender.isascii() and all(a.isascii() for a in addrs))


def rcpt_list(addrs: list[str], notify: str = "") -> list[Rcpt]:
    """Plain addresses as ``Rcpt`` tuples (one NOTIFY for all, no ORCPT)."""
    return [(a, notify, "") for a in addrs]


def smtp_submit(target: SmtpTarget, sender: str, rcpts: list[Rcpt], data: bytes,
                params: dict[str, str] | None = None) -> Submitted:  # fmt: skip
    """Submit one message over SMTP; some refused recipients are reported, all refused raise.

    ``data`` is the message in CRLF form (smtplib dot-stuffs it). 8-bit content gets
    ``BODY=8BITMIME`` and non-ASCII addresses ``SMTPUTF8`` when the server offers them;
    RET/ENVID from ``params`` and each recipient's NOTIFY/ORCPT go along when it
    offers DSN (RFC 3461).
    """
    try:
        if target.tls == "implicit":
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                target.host, target.port, local_hostname=target.helo or None,
                timeout=target.timeout, context=_tls_context(target),
            )  # fmt: skip
        else:
            client = smtplib.SMTP(target.host, target.port, local_hostname=target.helo or None,
                                  timeout=target.timeout)  # fmt: skip
    except (OSError, smtplib.SMTPException) as e:
        raise InjectError(EX_TEMPFAIL, f"cannot connect to {target.host}:{target.port}: {e}") from None
    try:
        return _transaction(client, target, sender, rcpts, data, params or {})
    except smtplib.SMTPServerDisconnected as e:
        raise InjectError(EX_TEMPFAIL, f"connection lost: {e}") from None
    except ssl.SSLError as e:
        raise InjectError(EX_UNAVAILABLE, f"TLS failed: {e}") from None
    except (OSError, smtplib.SMTPException) as e:
        raise InjectError(EX_TEMPFAIL, f"SMTP failed: {e}") from None
    finally:
        try:
            client.quit()
        except (OSError, smtplib.SMTPException):
            client.close()


def _transaction(client: smtplib.SMTP, target: SmtpTarget, sender: str, rcpts: list[Rcpt],
                 data: bytes, params: dict[str, str]) -> Submitted:  # fmt: skip
    code, resp = client.ehlo()
    if code != 250:
        code, resp = client.helo()
        if code != 250:
            raise InjectError(_status_of(code, EX_UNAVAILABLE), f"HELO refused: {code} {_text(resp)}")
    if target.tls == "starttls":
        if not client.has_extn("starttls"):
            raise InjectError(EX_UNAVAILABLE, "the server does not offer STARTTLS")
        client.starttls(context=_tls_context(target))
        client.ehlo()
    if target.auth is not None:
        try:
            client.login(*target.auth)
        except smtplib.SMTPAuthenticationError as e:
            raise InjectError(
                _status_of(e.smtp_code, EX_NOPERM), f"authentication failed: {e.smtp_code}"
            ) from None
        except smtplib.SMTPNotSupportedError:
            raise InjectError(EX_UNAVAILABLE, "the server does not offer AUTH") from None
    options = []
    if client.does_esmtp:
        if not data.isascii() and client.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        if needs_smtputf8(sender, (r[0] for r in rcpts)):
            if not client.has_extn("smtputf8"):
                raise InjectError(EX_DATAERR, "non-ASCII address but the server lacks SMTPUTF8")
            options.append("SMTPUTF8")
        if client.has_extn("size"):
            options.append(f"SIZE={len(data)}")
    dsn = client.has_extn("dsn")
    if dsn:
        options += [f"{k}={xtext_encode(params[k])}" for k in ("RET", "ENVID") if params.get(k)]
    code, resp = client.mail(sender, options)
    if code != 250:
        permanent = EX_NOPERM if code == 530 else EX_DATAERR  # 530: the listener wants AUTH
        raise InjectError(_status_of(code, permanent), f"sender refused: {code} {_text(resp)}")
    refused: dict[str, tuple[int, str]] = {}
    for addr, notify, orcpt in rcpts:
        rcpt_options = []
        if dsn and notify:
            rcpt_options.append(f"NOTIFY={notify}")
        if dsn and orcpt:
            addr_type, _, original = orcpt.partition(";")
            rcpt_options.append(f"ORCPT={addr_type};{xtext_encode(original)}")
        code, resp = client.rcpt(addr, rcpt_options)
        if code not in (250, 251):
            refused[addr] = (code, _text(resp))
    if len(refused) == len(rcpts):
        temporary = any(c < 500 for c, _ in refused.values())
        detail = "; ".join(f"{r}: {c} {t}" for r, (c, t) in refused.items())
        raise InjectError(EX_TEMPFAIL if temporary else EX_NOUSER, f"all recipients refused: {detail}")
    code, resp = client.data(data)
    if code != 250:
        raise InjectError(_status_of(code, EX_DATAERR), f"message refused: {code} {_text(resp)}")
    return Submitted(queue_id(_text(resp)), refused)


# --- the spool ---------------------------------------------------------------------


def spool_submit(cfg: Config, sender: str, rcpts: list[Rcpt], data: bytes, params: dict[str, str],
                 msg_id: str, pool: str = "", tenant: str = "") -> str:  # fmt: skip
    """Commit one message durably to the spool (fsync'd before this returns); its id.

    ``pool`` and ``tenant`` go into the envelope as a listener puts them there.

    One synchronous LMDB write transaction in this process, as ``fastmta queue``
    makes its changes: no writer process to start for a single message (that
    would triple sendmail's run time). LMDB serialises it with a running server's
    writer; that server picks the message up at its next ``due()`` scan (about a
    second), a stopped one when it starts. Raises InjectError: EX_CANTCREAT when
    the spool cannot be opened (the caller falls back to SMTP), EX_TEMPFAIL when it
    is full or broken.
    """
    import lmdb

    from fastmta.spool import admin, records, shards
    from fastmta.spool.records import LISTENER_SENDMAIL, Envelope, Recipient
    from fastmta.spool.store import body_items, is_no_space, sched_key

    now = time.time()
    env = Envelope(
        id=msg_id, sender=sender, rcpts=[Recipient(a, orcpt=o, notify=n) for a, n, o in rcpts], arrived=now,
        size=len(data), next_attempt=now, helo=socket.gethostname(), listener=LISTENER_SENDMAIL,
        params=params, pool=pool, tenant=tenant,
    )  # fmt: skip
    id_b = msg_id.encode("ascii")
    spool_cfg = shards.injection_config(cfg)
    try:
        store = admin.open_store(spool_cfg)
    except Exception as e:  # PermissionError, lmdb.Error, a damaged spool: let SMTP try
        raise InjectError(EX_CANTCREAT, f"cannot open the spool {spool_cfg.path}: {e}") from None
    try:
        store.write_growing(
            lambda txn: store.put_many(txn, [(id_b, records.encode(env))], body_items(id_b, data),
                                       [(sched_key(now, id_b), b"")]),
            len(data) + 4096,
        )  # fmt: skip
        return msg_id
    except lmdb.MapFullError:
        raise InjectError(EX_TEMPFAIL, "the spool is full") from None
    except lmdb.Error as e:
        raise InjectError(
            EX_TEMPFAIL, f"spool write failed{' (disk full)' if is_no_space(e) else ''}: {e}"
        ) from None
    finally:
        store.close()


def spool_writable(cfg: Config) -> bool:
    """May this user write into the spool, and does it exist? A missing spool is never
    created here: a cron job's stray ``./fastmta-spool`` would be read by no server.
    With several workers it is this process's shard (spool/shards.py)."""
    from fastmta.spool import shards

    path = shards.injection_config(cfg).path
    files = [os.path.join(path, "data.mdb"), os.path.join(path, "lock.mdb")]
    return all(os.path.isfile(f) and os.access(f, os.R_OK | os.W_OK) for f in files) and os.access(
        path, os.W_OK | os.X_OK
    )
