# SPDX-License-Identifier: MIT
"""The catalogue of every reply the inbound server sends, prebuilt as wire bytes.

Each reply has a name (``R_552_TOO_BIG``), a code and an enhanced status code
(RFC 3463); code and tests import the names. Text sent to peers is generic: never a
path, a config value or exception text. Replies that carry a variable part (the
host name, the queue id, the EHLO list) are built by the small functions at the end,
once per listener or once per message, never per line.
"""

from __future__ import annotations

from typing import NamedTuple


class Entry(NamedTuple):
    code: int
    enhanced: str
    text: str


CATALOGUE: dict[str, Entry] = {}


def _r(name: str, code: int, enhanced: str, text: str) -> bytes:
    CATALOGUE[name] = Entry(code, enhanced, text)
    return f"{code} {enhanced} {text}\r\n".encode("ascii")


R_221_BYE = _r("R_221_BYE", 221, "2.0.0", "Bye")
R_250_OK = _r("R_250_OK", 250, "2.0.0", "Ok")
R_250_SENDER_OK = _r("R_250_SENDER_OK", 250, "2.1.0", "Sender ok")
R_250_RCPT_OK = _r("R_250_RCPT_OK", 250, "2.1.5", "Recipient ok")
R_250_RESET = _r("R_250_RESET", 250, "2.0.0", "Reset")
R_252_VRFY = _r("R_252_VRFY", 252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
R_214_HELP = _r(
    "R_214_HELP", 214, "2.0.0", "See RFC 5321; commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT"
)
R_220_TLS_GO = _r("R_220_TLS_GO", 220, "2.0.0", "Ready to start TLS")
R_235_AUTH_OK = _r("R_235_AUTH_OK", 235, "2.7.0", "Authentication successful")
R_354_DATA = b"354 End data with <CR><LF>.<CR><LF>\r\n"  # RFC 3463 §1: no enhanced code on 354
CATALOGUE["R_354_DATA"] = Entry(354, "", "End data with <CR><LF>.<CR><LF>")

R_421_SHUTDOWN = _r("R_421_SHUTDOWN", 421, "4.3.2", "Service shutting down, try again later")
R_421_BUSY = _r("R_421_BUSY", 421, "4.3.2", "Too many connections, try again later")
R_421_IP_LIMIT = _r("R_421_IP_LIMIT", 421, "4.7.0", "Too many connections from your address")
R_421_TOO_MANY_ERRORS = _r("R_421_TOO_MANY_ERRORS", 421, "4.7.0", "Too many errors, closing connection")
R_421_AUTH_LIMIT = _r("R_421_AUTH_LIMIT", 421, "4.7.0", "Too many authentication failures")
R_421_TIMEOUT = _r("R_421_TIMEOUT", 421, "4.4.2", "Timeout exceeded, closing connection")
R_451_LOCAL_ERROR = _r("R_451_LOCAL_ERROR", 451, "4.3.0", "Local error in processing, try again later")
R_452_STORAGE = _r("R_452_STORAGE", 452, "4.3.1", "Insufficient system storage, try again later")
R_452_TOO_MANY_RCPTS = _r("R_452_TOO_MANY_RCPTS", 452, "4.5.3", "Too many recipients")
R_454_TLS_UNAVAILABLE = _r("R_454_TLS_UNAVAILABLE", 454, "4.7.0", "TLS not available")
R_454_AUTH_TEMP = _r("R_454_AUTH_TEMP", 454, "4.7.0", "Temporary authentication failure")

R_500_LINE_TOO_LONG = _r("R_500_LINE_TOO_LONG", 500, "5.5.2", "Line too long")
R_500_UNKNOWN = _r("R_500_UNKNOWN", 500, "5.5.1", "Command unrecognized")
R_501_SYNTAX = _r("R_501_SYNTAX", 501, "5.5.4", "Syntax error in parameters or arguments")
R_501_EHLO_SYNTAX = _r("R_501_EHLO_SYNTAX", 501, "5.5.4", "Syntax: EHLO domain")
R_501_BAD_ADDRESS = _r("R_501_BAD_ADDRESS", 501, "5.1.3", "Bad address syntax")
R_501_BAD_SENDER = _r("R_501_BAD_SENDER", 501, "5.1.7", "Bad sender address syntax")
R_501_AUTH_CANCELLED = _r("R_501_AUTH_CANCELLED", 501, "5.0.0", "Authentication cancelled")
R_501_BAD_BASE64 = _r("R_501_BAD_BASE64", 501, "5.5.2", "Cannot decode response")
R_502_EXPN = _r("R_502_EXPN", 502, "5.5.1", "EXPN not supported")
R_503_BAD_SEQUENCE = _r("R_503_BAD_SEQUENCE", 503, "5.5.1", "Bad sequence of commands")
R_503_NEED_EHLO = _r("R_503_NEED_EHLO", 503, "5.5.1", "Send EHLO or HELO first")
R_503_NESTED_MAIL = _r("R_503_NESTED_MAIL", 503, "5.5.1", "Sender already specified")
R_503_NEED_MAIL = _r("R_503_NEED_MAIL", 503, "5.5.1", "Need MAIL command")
R_503_NEED_RCPT = _r("R_503_NEED_RCPT", 503, "5.5.1", "Need RCPT command")
R_503_ALREADY_AUTH = _r("R_503_ALREADY_AUTH", 503, "5.5.1", "Already authenticated")
R_503_NO_AUTH = _r("R_503_NO_AUTH", 503, "5.5.1", "AUTH not available")
R_503_MIXED_DATA = _r("R_503_MIXED_DATA", 503, "5.5.1", "DATA and BDAT cannot be mixed")
R_504_AUTH_MECH = _r("R_504_AUTH_MECH", 504, "5.5.4", "Unrecognized authentication type")
R_530_AUTH_REQUIRED = _r("R_530_AUTH_REQUIRED", 530, "5.7.0", "Authentication required")
R_535_AUTH_FAILED = _r("R_535_AUTH_FAILED", 535, "5.7.8", "Authentication credentials invalid")
R_538_ENCRYPTION_REQUIRED = _r(
    "R_538_ENCRYPTION_REQUIRED", 538, "5.7.11", "Encryption required for requested authentication mechanism"
)
R_550_NO_MAILBOX = _r("R_550_NO_MAILBOX", 550, "5.1.1", "Mailbox unavailable")
R_550_SMUGGLING = _r("R_550_SMUGGLING", 550, "5.6.0", "Message refused: bare CR or LF in message data")
R_552_TOO_BIG = _r("R_552_TOO_BIG", 552, "5.3.4", "Message size exceeds fixed limit")
R_553_NEED_SMTPUTF8 = _r("R_553_NEED_SMTPUTF8", 553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
R_553_BAD_MAILBOX = _r("R_553_BAD_MAILBOX", 553, "5.1.3", "Mailbox name not allowed")
R_554_TOO_MANY_HOPS = _r("R_554_TOO_MANY_HOPS", 554, "5.4.6", "Too many hops: message refused as a mail loop")
R_550_XHEADER_DENIED = _r(
    "R_550_XHEADER_DENIED", 550, "5.7.1", "X-Fastmta headers are not accepted from this client"
)
R_550_XHEADER_BAD = _r("R_550_XHEADER_BAD", 550, "5.7.1", "Bad X-Fastmta-Pool or X-Fastmta-Tenant value")
R_550_POOL_UNKNOWN = _r("R_550_POOL_UNKNOWN", 550, "5.7.1", "Unknown sending pool")
R_554_RELAY_DENIED = _r("R_554_RELAY_DENIED", 554, "5.7.1", "Relay access denied")
R_555_BAD_PARAM = _r("R_555_BAD_PARAM", 555, "5.5.4", "Unsupported or malformed MAIL or RCPT parameter")

# SASL prompts (RFC 4954): "334 " and a base64 challenge, no enhanced code.
R_334_EMPTY = b"334 \r\n"
R_334_USERNAME = b"334 VXNlcm5hbWU6\r\n"
R_334_PASSWORD = b"334 UGFzc3dvcmQ6\r\n"


def banner(hostname: str) -> bytes:
    """The 220 greeting (RFC 5321 §4.2: no enhanced code on the greeting)."""
    return f"220 {hostname} ESMTP fastmta\r\n".encode()


def helo(hostname: str) -> bytes:
    return f"250 {hostname}\r\n".encode()


def ehlo(hostname: str, keywords: list[str]) -> bytes:
    """A multi-line 250 reply: the host name, then one keyword per line."""
    lines = [hostname, *keywords]
    head = "".join(f"250-{line}\r\n" for line in lines[:-1])
    return f"{head}250 {lines[-1]}\r\n".encode()


def ehlo_keywords(max_size: int, starttls: bool = False, auth: bool = False) -> list[str]:
    """What EHLO offers: the extensions of every session, then STARTTLS and AUTH where allowed."""
    every = ["PIPELINING", f"SIZE {max_size}", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES",
             "CHUNKING", "DSN"]  # fmt: skip
    return every + ["STARTTLS"] * starttls + ["AUTH PLAIN LOGIN"] * auth


def queued(msg_id: str) -> bytes:
    """The final 250 after the spool commit; it names the queue id."""
    return b"250 2.0.0 Ok: queued as " + msg_id.encode("ascii") + b"\r\n"


def chunk_ok(size: int) -> bytes:
    return b"250 2.0.0 %d octets received\r\n" % size
