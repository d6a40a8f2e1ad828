# SPDX-License-Identifier: MIT
"""What a load run sends and where: the spec, and the messages it carries."""

from __future__ import annotations

import email.utils
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fastmta.parser import encode_data

DEFAULT_SENDER = "load@loadgen.fastmta.test"
DEFAULT_RECIPIENT = "sink@sink.fastmta.test"


@dataclass(frozen=True)
class LoadSpec:
    """What to send, where, and the bounds of the run (count and/or duration)."""

    host: str = "127.0.0.1"
    port: int = 2525
    connections: int = 1
    per_connection: int = 1
    count: int | None = 1000
    duration: float | None = None
    messages: tuple[bytes, ...] = ()  # DATA payloads, already dot-stuffed and ending in ".\r\n"
    sender: str = DEFAULT_SENDER
    recipients: tuple[str, ...] = (DEFAULT_RECIPIENT,)
    pipelining: bool = False
    starttls: bool = False
    tls: bool = False  # implicit TLS from the first byte (submissions port 465)
    auth: tuple[str, str] | None = None  # AUTH PLAIN user, password after EHLO (and TLS)
    proxy: str = ""  # "v1" | "v2": a HAProxy PROXY header first, for proxy_protocol listeners
    proxy_from: str = "127.0.0.1/32"  # the client addresses the headers claim, in turn
    rset: bool = False
    rate: float = 0.0  # messages/s over the whole run; 0 = as fast as the server answers
    helo: str = "loadgen.fastmta.test"
    timeout: float = 30.0  # longest silence of one connection before it is dropped


def make_message(size: int, sender: str = DEFAULT_SENDER, recipient: str = DEFAULT_RECIPIENT) -> bytes:
    """A plain RFC 5322 message of about ``size`` bytes (headers included), CRLF lines."""
    head = (
        f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: fastmta load test\r\n"
        f"Date: {email.utils.formatdate()}\r\nMessage-ID: {email.utils.make_msgid(domain='loadgen.test')}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog; fastmta load generator text.\r\n"
    body_len = max(0, size - len(head))
    body = (line * (body_len // len(line) + 1))[:body_len]
    if body and not body.endswith(b"\r\n"):
        body = body[:-2] + b"\r\n" if len(body) >= 2 else b"\r\n"
    return head + body


def load_corpus(directory: str | Path) -> list[bytes]:
    """Every ``*.eml`` under ``directory`` (sorted, so runs repeat), raw bytes."""
    files = sorted(Path(directory).rglob("*.eml"))
    if not files:
        raise ValueError(f"no .eml files under {directory}")
    return [f.read_bytes() for f in files]


def payloads(raw_messages: Sequence[bytes]) -> tuple[bytes, ...]:
    """Dot-stuffed DATA payloads (the parser's encoder), built once before the run."""
    return tuple(encode_data(m) for m in raw_messages)
