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
from fastmta.inject import compose
from fastmta.inject import submit as inject
from fastmta.inject.injector import Injector
from fastmta.inject.submit import EX_DATAERR, EX_NOUSER, EX_OK, EX_USAGE, InjectError

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
    injector = Injector(cfg, opts.full_name, opts.dsn)
    if opts.mode == "s":
        from fastmta.commands.sendmail_bs import serve_stdio

        return serve_stdio(injector, sys.stdin.buffer, sys.stdout.buffer)
    return queue_stdin(injector, opts, sys.stdin.buffer)


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


def envelope_sender(opts: Options, hostname: str) -> str:
    """The envelope sender: ``-f`` (``<>`` or "" = the null sender), else user@hostname."""
    if opts.sender is None:
        return compose.qualify(login_name(), hostname)
    if opts.sender.strip() in ("", "<>"):
        return ""
    return compose.qualify(opts.sender, hostname)


def queue_stdin(injector: Injector, opts: Options, stream: BinaryIO) -> int:
    """The default mode (-bm): message on stdin, recipients from argv and/or the header."""
    hostname = injector.hostname
    try:
        rcpts = compose.parse_recipients(opts.rcpts, hostname)
        sender = envelope_sender(opts, hostname)
    except compose.AddressError as e:
        return _fail(EX_NOUSER, str(e))
    if not rcpts and not opts.extract:
        return _fail(EX_USAGE, f"no recipients given (name them or use -t)\n{USAGE}")
    try:
        raw = read_message(stream, opts.dot_ends, injector.cfg.limits.max_message_size)
        msg = compose.Message.parse(compose.to_crlf(raw))
        if opts.extract:
            rcpts += [compose.qualify(a, hostname) for a in msg.recipients()]
    except compose.MessageError as e:
        return _fail(EX_DATAERR, str(e))
    except compose.AddressError as e:
        return _fail(EX_NOUSER, str(e))
    if not rcpts:
        return _fail(EX_DATAERR, "no recipient addresses found in the message header")
    try:
        unique = list(dict.fromkeys(rcpts))
        msg_id = injector.submit(sender, inject.rcpt_list(unique, opts.dsn.get("NOTIFY", "")), msg, {})
    except InjectError as e:
        return _fail(e.status, str(e))
    if opts.verbose:
        print(f"sendmail: queued as {msg_id}", file=sys.stderr)
    return EX_OK
