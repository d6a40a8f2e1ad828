# SPDX-License-Identifier: MIT
"""``fastmta send``: compose a MIME message (with attachments) and submit it over SMTP.

For people and scripts: the stdlib ``email`` package builds the message, so text,
images, audio and video go as proper MIME parts (types guessed from file names),
and attachments are base64 so they arrive byte-identical. Prints the queue id
from the server's final ``250``. The AUTH password comes from ``FASTMTA_PASSWORD``
or a no-echo prompt and is never printed. Exit codes as ``sendmail``'s.
"""

from __future__ import annotations

import argparse
import email.policy
import email.utils
import getpass
import mimetypes
import os
import sys
from email.message import EmailMessage
from typing import NoReturn

from fastmta import config
from fastmta.commands import add_config_arg
from fastmta.commands.sendmail import login_name
from fastmta.inject import compose
from fastmta.inject import submit as inject
from fastmta.inject.submit import EX_DATAERR, EX_NOINPUT, EX_NOUSER, EX_OK, EX_USAGE, InjectError

PASSWORD_ENV = "FASTMTA_PASSWORD"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"fastmta send: {message}", file=sys.stderr)
        raise SystemExit(EX_USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fastmta send", description="Compose a MIME message and submit it over SMTP.")
    p.add_argument("--from", dest="sender", metavar="ADDR", help="sender (default: you@hostname)")
    p.add_argument("--to", action="append", default=[], metavar="ADDR", help="recipient (repeatable)")
    p.add_argument("--cc", action="append", default=[], metavar="ADDR", help="Cc recipient (repeatable)")
    p.add_argument("--bcc", action="append", default=[], metavar="ADDR", help="hidden recipient (repeatable)")
    p.add_argument("--subject", default="", help="Subject: text")
    p.add_argument("--body", help="body text (default: stdin when it is not a terminal)")
    p.add_argument("--html", metavar="FILE", help="an HTML alternative of the body, read from FILE")
    p.add_argument("--attach", action="append", default=[], metavar="FILE", help="attach a file (repeatable)")
    p.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'", help="extra header")
    p.add_argument("--server", metavar="HOST:PORT", help="submission server (default: the first listener)")
    tls = p.add_mutually_exclusive_group()
    tls.add_argument("--tls", action="store_true", help="require STARTTLS")
    tls.add_argument("--ssl", action="store_true", help="implicit TLS (port 465 style)")
    p.add_argument("--insecure", action="store_true", help="do not verify the server certificate")
    p.add_argument("--cafile", help="CA bundle to verify the server certificate")
    p.add_argument("--auth", metavar="USER", help=f"AUTH as USER; password from ${PASSWORD_ENV} or a prompt")
    p.add_argument("--helo", help="EHLO name (default: the configured hostname)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per SMTP step (default 60)")
    p.add_argument("--dry-run", action="store_true", help="print the message instead of sending it")
    add_config_arg(p)
    return p


def _fail(status: int, message: str) -> int:
    print(f"fastmta send: {message}", file=sys.stderr)
    return status


def compose_message(args: argparse.Namespace, sender: str, hostname: str, body: str) -> EmailMessage:
    """The MIME message: text body (with an HTML alternative), then each attachment as a
    base64 part of its guessed type."""
    msg = EmailMessage()
    msg["From"] = sender
    if args.to:
        msg["To"] = ", ".join(args.to)
    if args.cc:
        msg["Cc"] = ", ".join(args.cc)
    msg["Subject"] = args.subject
    msg["Date"] = email.utils.formatdate(localtime=True)
    msg["Message-ID"] = email.utils.make_msgid(domain=hostname)
    for header in args.header:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"bad --header {header!r} (expected 'Name: value')")
        msg[name.strip()] = value.strip()
    msg.set_content(body)
    if args.html:
        with open(args.html, encoding="utf-8", errors="replace") as f:
            msg.add_alternative(f.read(), subtype="html")
    for path in args.attach:
        ctype, encoding = mimetypes.guess_type(path)
        if ctype is None or encoding is not None:  # unknown, or compressed (.gz): opaque bytes
            ctype = "application/octet-stream"
        maintype, subtype = ctype.split("/", 1)
        with open(path, "rb") as f:
            data = f.read()
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=os.path.basename(path))
    return msg


def _password(user: str) -> str:
    env = os.environ.get(PASSWORD_ENV)
    return env if env is not None else getpass.getpass(f"Password for {user}: ")


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config.load(args.config)
    except config.ConfigError as e:
        return _fail(inject.EX_CONFIG, "bad configuration: " + "; ".join(e.errors))
    hostname = cfg.hostname
    try:
        sender = compose.qualify(args.sender or login_name(), hostname)
        rcpts = compose.parse_recipients([*args.to, *args.cc, *args.bcc], hostname)
    except compose.AddressError as e:
        return _fail(EX_NOUSER, str(e))
    if not rcpts:
        return _fail(EX_USAGE, "no recipients (use --to, --cc or --bcc)")
    if args.body is not None:
        body = args.body
    else:  # stdin as UTF-8 whatever the locale; a pipe from cron may be anything
        body = "" if sys.stdin.isatty() else sys.stdin.buffer.read().decode("utf-8", "replace")
    try:
        msg = compose_message(args, sender, hostname, body)
    except OSError as e:
        return _fail(EX_NOINPUT, f"cannot read attachment: {e}")
    except ValueError as e:
        return _fail(EX_DATAERR, str(e))
    utf8 = inject.needs_smtputf8(sender, rcpts)
    data = msg.as_bytes(policy=(email.policy.SMTPUTF8 if utf8 else email.policy.SMTP))
    if args.dry_run:
        sys.stdout.buffer.write(data)
        return EX_OK
    try:
        target = _target(args, cfg, hostname)
    except ValueError as e:
        return _fail(EX_USAGE, str(e))
    try:
        done = inject.smtp_submit(target, sender, inject.rcpt_list(rcpts), data)
    except InjectError as e:
        return _fail(e.status, str(e))
    for rcpt, (code, text) in done.refused.items():
        print(f"fastmta send: {rcpt}: refused: {code} {text}", file=sys.stderr)
    print(done.queue_id)
    return EX_OK


def _target(args: argparse.Namespace, cfg: config.Config, hostname: str) -> inject.SmtpTarget:
    """Where to submit: ``--server``, else the first configured listener (its TLS mode kept)."""
    if args.server:
        try:
            host, port = config.parse_hostport(args.server, default_port=587)
        except ValueError:
            raise ValueError(f"bad --server {args.server!r} (expected host:port)") from None
        tls = "none"
    else:
        host, port, tls = inject.local_endpoint(cfg, "submission" if args.auth else "relay")
    if args.tls:
        tls = "starttls"
    elif args.ssl:
        tls = "implicit"
    auth = (args.auth, _password(args.auth)) if args.auth else None
    return inject.SmtpTarget(host, port, tls=tls, verify=not args.insecure, cafile=args.cafile, auth=auth,
                             helo=args.helo or hostname, timeout=args.timeout)  # fmt: skip
