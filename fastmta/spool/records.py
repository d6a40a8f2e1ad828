# SPDX-License-Identifier: MIT
"""Versioned binary records for envelopes with per-recipient state.

A record is ``version byte | crc32 | fixed header | length-prefixed strings |
recipients``; the CRC lets recovery check a million records without decoding them.
Fields are only ever appended within a version and decoders ignore trailing bytes,
so an older reader tolerates a newer writer's additions. Anything that does not
decode raises ``RecordError``; recovery quarantines such a record, it never
crashes on it. The message id is the LMDB key, not part of the value.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import NamedTuple

VERSION = 1
PENDING, DONE, FAILED, BOUNCE = "pending", "done", "failed", "bounce"
# "bounce": an administrator asked for a bounce (`fastmta queue bounce`); the
# scheduler treats it like a 5xx (DSN to the sender, then "failed"). It still
# counts as "not finished", so the message stays until the scheduler acts.
STATES = (PENDING, DONE, FAILED, BOUNCE)
_STATE_CODE = {s: i for i, s in enumerate(STATES)}
MAX_ERROR = 1000  # characters of last_error kept; replies can be long

_CRC = struct.Struct("<BI")  # version, crc32 of the rest
_HDR = struct.Struct("<dQIdH")  # arrived, size, attempts, next_attempt, n_rcpts
_NEXT = struct.Struct("<d")
NEXT_ATTEMPT_END = 5 + 8 + 8 + 4 + 8  # crc header, arrived, size, attempts, next_attempt
_RCPT = struct.Struct("<BH")  # state, attempts
_LEN = struct.Struct("<H")


class RecordError(ValueError):
    """A record that cannot be decoded (damaged, truncated, unknown version)."""


@dataclass(slots=True)
class Recipient:
    addr: str
    state: str = PENDING
    orcpt: str = ""
    notify: str = ""  # RFC 3461 NOTIFY value as given ("" = default)
    last_error: str = ""
    attempts: int = 0

    @property
    def pending(self) -> bool:
        """Still the queue's business (not delivered, not finally failed)."""
        return self.state == PENDING or self.state == BOUNCE


@dataclass(slots=True)
class Envelope:
    id: str
    sender: str
    rcpts: list[Recipient]
    arrived: float = 0.0
    size: int = 0
    attempts: int = 0
    next_attempt: float = 0.0
    last_error: str = ""
    client_ip: str = ""
    helo: str = ""
    listener: str = ""
    params: dict[str, str] = field(default_factory=dict)  # MAIL params: BODY, SMTPUTF8, RET, ENVID

    def pending(self) -> list[int]:
        """Indexes of recipients still to be handled."""
        return [i for i, r in enumerate(self.rcpts) if r.pending]


class RcptState(NamedTuple):
    """A recipient's new state for ``Spool.update``."""

    state: str
    last_error: str = ""


def _s(value: str) -> bytes:
    b = value.encode("utf-8", "surrogateescape")
    return _LEN.pack(len(b)) + b if len(b) < 65536 else _LEN.pack(65535) + b[:65535]


def encode(env: Envelope) -> bytes:
    """Envelope → record bytes (compact; a one-recipient envelope is ~100 bytes)."""
    params = "\x00".join(f"{k}={v}" for k, v in env.params.items())
    parts = [
        _HDR.pack(env.arrived, env.size, env.attempts, env.next_attempt, len(env.rcpts)),
        _s(env.sender), _s(env.last_error[:MAX_ERROR]), _s(env.client_ip), _s(env.helo),
        _s(env.listener), _s(params),
    ]  # fmt: skip
    for r in env.rcpts:
        parts.append(_RCPT.pack(_STATE_CODE[r.state], min(r.attempts, 65535)))
        parts.append(_s(r.addr) + _s(r.orcpt) + _s(r.notify) + _s(r.last_error[:MAX_ERROR]))
    payload = b"".join(parts)
    return _CRC.pack(VERSION, zlib.crc32(payload)) + payload


def next_attempt_of(record: bytes | memoryview) -> float:
    """The ``next_attempt`` field read straight from a record (no full decode)."""
    return float(_NEXT.unpack_from(record, NEXT_ATTEMPT_END - 8)[0])


def check(data: bytes | memoryview) -> bool:
    """Cheap integrity check (version and CRC) without decoding."""
    if len(data) < _CRC.size + _HDR.size:
        return False
    version, crc = _CRC.unpack_from(data, 0)
    return version == VERSION and zlib.crc32(memoryview(data)[_CRC.size :]) == crc


def decode(msg_id: str, data: bytes | memoryview) -> Envelope:
    """Record bytes → Envelope; ``RecordError`` if the record is damaged."""
    if not check(data):
        raise RecordError("bad version or checksum")
    try:
        arrived, size, attempts, next_attempt, n = _HDR.unpack_from(data, _CRC.size)
        pos = _CRC.size + _HDR.size
        strs = []
        for _ in range(6):
            (ln,) = _LEN.unpack_from(data, pos)
            pos += 2
            if pos + ln > len(data):
                raise RecordError("truncated string")
            strs.append(bytes(data[pos : pos + ln]).decode("utf-8", "surrogateescape"))
            pos += ln
        rcpts = []
        for _ in range(n):
            code, r_attempts = _RCPT.unpack_from(data, pos)
            pos += _RCPT.size
            rs = []
            for _ in range(4):
                (ln,) = _LEN.unpack_from(data, pos)
                pos += 2
                if pos + ln > len(data):
                    raise RecordError("truncated recipient")
                rs.append(bytes(data[pos : pos + ln]).decode("utf-8", "surrogateescape"))
                pos += ln
            rcpts.append(Recipient(rs[0], STATES[code], rs[1], rs[2], rs[3], r_attempts))
    except (struct.error, IndexError) as e:
        raise RecordError(f"damaged record: {e}") from None
    sender, last_error, client_ip, helo, listener, params_s = strs
    params = dict(p.split("=", 1) for p in params_s.split("\x00") if "=" in p) if params_s else {}
    return Envelope(msg_id, sender, rcpts, arrived, size, attempts, next_attempt, last_error,
                    client_ip, helo, listener, params)  # fmt: skip
