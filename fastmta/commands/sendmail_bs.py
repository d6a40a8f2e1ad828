# SPDX-License-Identifier: MIT
"""``fastmta sendmail -bs``: an SMTP dialogue on stdin/stdout for local clients.

The peer is a local process that already may inject mail, so there is no relay
policy and no AUTH here; each accepted message goes through the same Injector as
plain ``sendmail`` (header fix-ups, spool or local listener). Argument parsing
and reply bytes are the server's (``smtp.commands``, ``smtp.replies``), so the
dialogue answers exactly as the listener would. Lines may end in CRLF or LF.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, BinaryIO

from fastmta import compose
from fastmta.inject import EX_OK, EX_TEMPFAIL, InjectError
from fastmta.smtp import replies as R
from fastmta.smtp.commands import ArgError, parse_mail, parse_rcpt

if TYPE_CHECKING:
    from fastmta.commands.sendmail import Injector

_R_BAD_HEADER = b"554 5.6.0 Message header not acceptable\r\n"
_R_FAILED = b"554 5.0.0 Transaction failed\r\n"
_READ = 65536


def _read_data(inp: BinaryIO, limit: int) -> bytes | None:
    """DATA lines up to the lone ".", dot-unstuffed (RFC 5321 §4.5.2); None when over
    ``limit`` (the rest is still read, so it is never taken for commands). EOFError at EOF."""
    out: list[bytes] = []
    size, at_start = 0, True
    while True:
        chunk = inp.readline(_READ)
        if not chunk:
            raise EOFError
        if at_start:
            if chunk.rstrip(b"\r\n") == b".":
                return None if size > limit else b"".join(out)
            if chunk[:1] == b".":
                chunk = chunk[1:]
        at_start = chunk.endswith(b"\n")
        size += len(chunk)
        if size <= limit:
            out.append(chunk)


def serve_stdio(injector: Injector, inp: BinaryIO, out: BinaryIO) -> int:
    """Run one SMTP session over the two streams until QUIT or EOF."""
    cfg = injector.cfg
    limit = cfg.limits.max_message_size
    features = ["PIPELINING", f"SIZE {limit}", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"]

    def send(reply: bytes) -> None:
        out.write(reply)
        out.flush()

    send(R.banner(injector.hostname))
    sender: str | None = None
    params: dict[str, str] = {}
    rcpts: list[str] = []
    while True:
        line = inp.readline(cfg.limits.max_line_length + 2)
        if not line:
            return EX_OK
        if not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):  # drop the rest of an over-long line
                line = inp.readline(_READ)
            send(R.R_500_LINE_TOO_LONG)
            continue
        text = line.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        try:
            if verb == "EHLO":
                sender, params, rcpts = None, {}, []
                send(R.ehlo(injector.hostname, features) if arg.strip() else R.R_501_EHLO_SYNTAX)
            elif verb == "HELO":
                sender, params, rcpts = None, {}, []
                send(R.helo(injector.hostname) if arg.strip() else R.R_501_SYNTAX)
            elif verb == "MAIL":
                if sender is not None:
                    send(R.R_503_NESTED_MAIL)
                elif not arg.upper().startswith("FROM:"):
                    send(R.R_501_SYNTAX)
                else:
                    sender, params = parse_mail(arg[5:], limit)
                    params.pop("SIZE", None)
                    send(R.R_250_SENDER_OK)
            elif verb == "RCPT":
                if sender is None:
                    send(R.R_503_NEED_MAIL)
                elif not arg.upper().startswith("TO:"):
                    send(R.R_501_SYNTAX)
                elif len(rcpts) >= cfg.limits.max_recipients:
                    send(R.R_452_TOO_MANY_RCPTS)
                else:
                    addr, _, _ = parse_rcpt(arg[3:], utf8=True)
                    rcpts.append(addr if "@" in addr else f"{addr}@{injector.hostname}")
                    send(R.R_250_RCPT_OK)
            elif verb == "DATA":
                if sender is None:
                    send(R.R_503_NEED_MAIL)
                elif not rcpts:
                    send(R.R_503_NEED_RCPT)
                else:
                    send(R.R_354_DATA)
                    send(_accept(injector, sender, rcpts, params, _read_data(inp, limit)))
                    sender, params, rcpts = None, {}, []
            elif verb == "RSET":
                sender, params, rcpts = None, {}, []
                send(R.R_250_RESET)
            elif verb == "NOOP":
                send(R.R_250_OK)
            elif verb == "VRFY":
                send(R.R_252_VRFY)
            elif verb == "EXPN":
                send(R.R_502_EXPN)
            elif verb == "HELP":
                send(R.R_214_HELP)
            elif verb == "QUIT":
                send(R.R_221_BYE)
                return EX_OK
            else:
                send(R.R_500_UNKNOWN)
        except ArgError as e:
            send(e.reply)
        except EOFError:
            return EX_TEMPFAIL  # stdin closed inside DATA: nothing was queued


def _accept(injector: Injector, sender: str, rcpts: list[str], params: dict[str, str],
            data: bytes | None) -> bytes:  # fmt: skip
    """Queue one message from the dialogue; the reply to send for it."""
    if data is None:
        return R.R_552_TOO_BIG
    try:
        msg = compose.Message.parse(compose.to_crlf(data))
        return R.queued(injector.submit(sender, rcpts, msg, params))
    except compose.MessageError:
        return _R_BAD_HEADER
    except InjectError as e:
        return R.R_451_LOCAL_ERROR if e.status == EX_TEMPFAIL else _R_FAILED
