# SPDX-License-Identifier: MIT
"""``fastmta sendmail``: the sendmail-compatible injector (PHP ``mail()``, cron, git).

Reads a message from stdin, fixes its header (Bcc removed; From, Date,
Message-ID added when missing) and queues it: straight into the spool when this
user can open it, else over SMTP to the local listener. Exit codes follow
sysexits.h as sendmail's do: 0 queued, 64 usage (also: no recipients given),
65 bad message (also: ``-t`` found no recipients), 67 bad address, 75 temporary
failure (spool and listener both unavailable), 78 bad configuration.
``-bs`` speaks SMTP on stdin/stdout, ``-bp`` lists the queue.
"""

from __future__ import annotations

import getopt
import os
import pwd
import sys
from dataclasses import dataclass, field
from typing import BinaryIO

from fastmta import config
from fastmta.deliverylog import DeliveryLog
from fastmta.inject import compose
from fastmta.inject import submit as inject
from fastmta.inject.submit import EX_DATAERR, EX_NOUSER, EX_OK, EX_TEMPFAIL, EX_USAGE, InjectError

# getopt letters as Postfix's sendmail takes them: options with ':' take an argument.
_SHORT = "A:B:C:F:GIL:N:O:R:UV:X:b:ce:f:h:imno:p:q:r:tv"
_LONG = ["config="]
SYSTEM_CONFIG = "/etc/fastmta/fastmta.toml"  # where deploy/ installs it
USAGE = (
    "usage: fastmta sendmail [-t] [-i] [-f sender] [-F name] [-bm|-bs|-bp] [--config FILE] [--] [rcpt ...]"
)


@dataclass(slots=True)
class Options:
    mode: str = "m"
    extract: bool = False  # -t
    dot_ends: bool = True  # without -i / -oi a line "." ends the message
    sender: str | None = None  # -f / -r
    full_name: str = ""  # -F
    config_path: str | None = None  # --config / -C
    verbose: bool = False
    dsn: dict[str, str] = field(default_factory=dict)  # -N, -R, -V → NOTIFY, RET, ENVID (RFC 3461)
    rcpts: list[str] = field(default_factory=list)


def parse_args(argv: list[str]) -> Options:
    """sendmail's flags; unknown delivery options (-oem, -odb, -O x=y, -B 8BITMIME, ...) are
    accepted and ignored, as every sendmail clone does. Raises getopt.GetoptError."""
    argv = [a for a in argv if a != "-q"]  # "-q" alone (queue run) takes no argument
    opts, args = getopt.gnu_getopt(argv, _SHORT, _LONG)
    o = Options(rcpts=args)
    for flag, value in opts:
        if flag == "-t":
            o.extract = True
        elif flag == "-i" or (flag == "-o" and value == "i"):
            o.dot_ends = False
        elif flag in ("-f", "-r"):
            o.sender = value
        elif flag == "-F":
            o.full_name = value
        elif flag in ("--config", "-C"):
            o.config_path = value
        elif flag == "-b":
            o.mode = value
        elif flag == "-v":
            o.verbose = True
        elif flag == "-N":
            o.dsn["NOTIFY"] = value.upper()
        elif flag == "-R":
            o.dsn["RET"] = value.upper()
        elif flag == "-V":
            o.dsn["ENVID"] = value
    return o


def config_path(opts: Options, system: str = SYSTEM_CONFIG) -> str | None:
    """``-C``/``--config``, else ``$FASTMTA_CONFIG``, else the system file when it exists:
    programs that run /usr/sbin/sendmail pass neither flag nor environment."""
    path = opts.config_path or os.environ.get(config.ENV_VAR)
    return path or (system if os.path.isfile(system) else None)


def _fail(status: int, message: str) -> int:
    print(f"sendmail: {message}", file=sys.stderr)
    return status


def main(argv: list[str]) -> int:
    if argv[:1] in (["--help"], ["-h"]):
        print(f"{USAGE}\n\n{__doc__}")
        return EX_OK
    try:
        opts = parse_args(argv)
    except getopt.GetoptError as e:
        return _fail(EX_USAGE, f"{e}\n{USAGE}")
    if opts.mode == "p":
        from fastmta.commands import queue

        path = config_path(opts)
        return int(queue.main(["list", *(["--config", path] if path else [])]) or 0)
    if opts.mode == "i":  # newaliases: there is no aliases database
        return EX_OK
    if opts.mode not in ("m", "s"):
        return _fail(EX_USAGE, f"-b{opts.mode} is not supported\n{USAGE}")
    try:
        cfg = config.load(config_path(opts))
    except config.ConfigError as e:
        return _fail(inject.EX_CONFIG, "bad configuration: " + "; ".join(e.errors))
    injector = Injector(cfg, opts)
    if opts.mode == "s":
        from fastmta.commands.sendmail_bs import serve_stdio

        return serve_stdio(injector, sys.stdin.buffer, sys.stdout.buffer)
    return injector.run(sys.stdin.buffer)


def login_name() -> str:
    """The invoking user's name (what sendmail puts in the envelope sender)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return os.environ.get("USER") or "nobody"


def read_message(stream: BinaryIO, dot_ends: bool, limit: int) -> bytes:
    """stdin up to EOF, or (without -i) up to a line holding only ".". Past ``limit``
    bytes → MessageError, without reading the rest into memory."""
    if not dot_ends:
        data = stream.read(limit + 1)
        if len(data) > limit:
            raise compose.MessageError("message exceeds the size limit")
        return data
    out, size = [], 0
    for line in stream:
        if line.rstrip(b"\r\n") == b".":
            break
        size += len(line)
        if size > limit:
            raise compose.MessageError("message exceeds the size limit")
        out.append(line)
    return b"".join(out)


class Injector:
    """Turns one message (bytes) plus options into a queued message: the work shared by
    the plain mode and ``-bs``."""

    def __init__(self, cfg: config.Config, opts: Options) -> None:
        self.cfg = cfg
        self.opts = opts
        self.hostname = cfg.hostname

    def sender(self) -> str:
        """The envelope sender: ``-f`` (``<>`` or "" = the null sender), else user@hostname."""
        if self.opts.sender is None:
            return compose.qualify(login_name(), self.hostname)
        if self.opts.sender.strip() in ("", "<>"):
            return ""
        return compose.qualify(self.opts.sender, self.hostname)

    def run(self, stream: BinaryIO) -> int:
        """The default mode (-bm): message on stdin, recipients from argv and/or the header."""
        try:
            rcpts = compose.parse_recipients(self.opts.rcpts, self.hostname)
            sender = self.sender()
        except compose.AddressError as e:
            return _fail(EX_NOUSER, str(e))
        if not rcpts and not self.opts.extract:
            return _fail(EX_USAGE, f"no recipients given (name them or use -t)\n{USAGE}")
        try:
            raw = read_message(stream, self.opts.dot_ends, self.cfg.limits.max_message_size)
            msg = compose.Message.parse(compose.to_crlf(raw))
            if self.opts.extract:
                rcpts += [compose.qualify(a, self.hostname) for a in msg.recipients()]
        except compose.MessageError as e:
            return _fail(EX_DATAERR, str(e))
        except compose.AddressError as e:
            return _fail(EX_NOUSER, str(e))
        if not rcpts:
            return _fail(EX_DATAERR, "no recipient addresses found in the message header")
        try:
            unique = list(dict.fromkeys(rcpts))
            msg_id = self.submit(sender, inject.rcpt_list(unique, self.opts.dsn.get("NOTIFY", "")), msg, {})
        except InjectError as e:
            return _fail(e.status, str(e))
        if self.opts.verbose:
            print(f"sendmail: queued as {msg_id}", file=sys.stderr)
        return EX_OK

    def submit(self, sender: str, rcpts: list[inject.Rcpt], msg: compose.Message, params: dict[str, str],
               msg_id: str | None = None) -> str:  # fmt: skip
        """Fix the header and queue: spool first, the local listener second. Returns the queue id."""
        from fastmta.spool.ids import new_id

        msg_id = msg_id or new_id()
        msg.hide_bcc()
        compose.add_missing(msg, hostname=self.hostname, sender=sender or f"MAILER-DAEMON@{self.hostname}",
                            full_name=self.opts.full_name, msg_id=msg_id, uid=os.getuid())  # fmt: skip
        data = msg.to_bytes()
        if len(data) > self.cfg.limits.max_message_size:
            raise InjectError(EX_DATAERR, "message exceeds the size limit")
        if not data.isascii():
            params.setdefault("BODY", "8BITMIME")
        if inject.needs_smtputf8(sender, (r[0] for r in rcpts)):
            params["SMTPUTF8"] = ""
        params.update({k: v for k, v in self.opts.dsn.items() if k in ("RET", "ENVID")})
        errors = []
        if inject.spool_writable(self.cfg):
            try:
                inject.spool_submit(self.cfg, sender, rcpts, data, params, msg_id)
            except InjectError as e:
                errors.append(str(e))
            else:
                self._log_received(msg_id, sender, rcpts, len(data))
                return msg_id
        host, port, tls = inject.local_endpoint(self.cfg)
        target = inject.SmtpTarget(host, port, tls=tls, verify=False, helo=self.hostname)
        try:
            done = inject.smtp_submit(target, sender, rcpts, data, params)
        except InjectError as e:
            if e.status == EX_TEMPFAIL and errors:
                raise InjectError(EX_TEMPFAIL, "; ".join([*errors, str(e)])) from None
            raise
        for rcpt, (code, text) in done.refused.items():
            print(f"sendmail: {rcpt}: refused: {code} {text}", file=sys.stderr)
        return done.queue_id

    def _log_received(self, msg_id: str, sender: str, rcpts: list[inject.Rcpt], size: int) -> None:
        """The ``received`` line serve writes for SMTP mail, when the delivery log is a file
        (appends of whole lines are safe beside a running server); on stdout it goes nowhere."""
        if not self.cfg.log.file:
            return
        try:
            dlog = DeliveryLog(self.cfg.log.file)
        except OSError as e:
            print(f"sendmail: delivery log not written: {e.strerror}", file=sys.stderr)
            return
        try:
            dlog.event("received", msg_id, sender, [r[0] for r in rcpts], size=size, client_ip="",
                       listener="sendmail")  # fmt: skip
        finally:
            dlog.close()
