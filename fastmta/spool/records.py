# SPDX-License-Identifier: MIT
"""Versioned binary records for envelopes with per-recipient state.

A record is ``version byte | crc32 | fixed header | length-prefixed strings |
recipients``; the CRC lets recovery check a million records without decoding them.
Fields are only ever appended within a version and decoders ignore trailing bytes,
so an older reader tolerates a newer writer's additions: the sending pool and the
tenant ride in such a trailing block (``_TAGS``), absent from older records. Anything that does not
decode raises ``RecordError``; recovery quarantines such a record, it never
crashes on it. The message id is the LMDB key, not part of the value.
"""

from __future__ import annotations

import functools
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
# Envelope.listener of mail ``fastmta sendmail`` committed straight into the spool: no
# listener saw it, so the server that takes it in writes its "received" log line.
LISTENER_SENDMAIL = "sendmail"
MAX_ERROR = 1000  # characters of last_error kept; replies can be long

_CRC = struct.Struct("<BI")  # version, crc32 of the rest
_HDR = struct.Struct("<dQIdH")  # arrived, size, attempts, next_attempt, n_rcpts
_NEXT = struct.Struct("<d")
_TAGS = struct.Struct("<HH")  # trailing block: pool and tenant lengths, then their bytes
NEXT_ATTEMPT_END = 5 + 8 + 8 + 4 + 8  # crc header, arrived, size, attempts, next_attempt


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
    pool: str = ""  # sending pool chosen at reception ("" = by sender domain, else the default)
    tenant: str = ""  # who the message was sent for ("" = nobody in particular)

    def pending(self) -> list[int]:
        """Indexes of recipients still to be handled."""
        return [i for i, r in enumerate(self.rcpts) if r.pending]


class RcptState(NamedTuple):
    """A recipient's new state for ``Spool.update``."""

    state: str
    last_error: str = ""


@functools.lru_cache(maxsize=64)
def _layout(n: int) -> struct.Struct:
    """(state, attempts) per recipient, then the byte length of each of the 6 + 4n strings."""
    return struct.Struct("<" + "BH" * n + f"{6 + 4 * n}H")


def _cap(b: bytes) -> bytes:
    return b if len(b) <= 65535 else b[:65535]


def encode(env: Envelope) -> bytes:
    """Envelope → record bytes (compact; a one-recipient envelope is ~100 bytes).

    Layout after the header: per-recipient (state, attempts), then the lengths of
    every string, then the strings' UTF-8 bytes: three struct calls, no per-field
    packing, whatever the number of recipients. One per message on the receive
    path: ASCII strings (the usual case) are encoded in one call, their lengths
    taken from the text.
    """
    params = "\x00".join([f"{k}={v}" for k, v in env.params.items()]) if env.params else ""
    strs = [env.sender, env.last_error[:MAX_ERROR], env.client_ip, env.helo, env.listener, params]
    fixed: list[int] = []
    for r in env.rcpts:
        strs += (r.addr, r.orcpt, r.notify, r.last_error[:MAX_ERROR])
        fixed += (_STATE_CODE[r.state], min(r.attempts, 65535))
    text = "".join(strs)
    if text.isascii():
        enc = [text.encode("ascii")]
        lens = list(map(len, strs))
    else:
        enc = [x.encode("utf-8", "surrogateescape") for x in strs]
        lens = list(map(len, enc))
    if max(lens) > 65535:
        enc = [_cap(x.encode("utf-8", "surrogateescape")) for x in strs]
        lens = list(map(len, enc))
    n = len(env.rcpts)
    tags = b""
    if env.pool or env.tenant:
        pool, tenant = (
            _cap(env.pool.encode("utf-8", "surrogateescape")),
            _cap(env.tenant.encode("utf-8", "surrogateescape")),
        )
        tags = _TAGS.pack(len(pool), len(tenant)) + pool + tenant
    payload = b"".join([_HDR.pack(env.arrived, env.size, env.attempts, env.next_attempt, n),
                        _layout(n).pack(*fixed, *lens), *enc, tags])  # fmt: skip
    return _CRC.pack(VERSION, zlib.crc32(payload)) + payload


def next_attempt_of(record: bytes | memoryview) -> float:
    """The ``next_attempt`` field read straight from a record (no full decode)."""
    return float(_NEXT.unpack_from(record, NEXT_ATTEMPT_END - 8)[0])


def check(data: bytes | memoryview) -> bool:
    """Cheap integrity check (version and CRC) without decoding."""
    if len(data) < _CRC.size + _HDR.size:
        return False
    version, crc = _CRC.unpack_from(data, 0)
    return bool(version == VERSION and zlib.crc32(memoryview(data)[_CRC.size :]) == crc)


def decode(msg_id: str, data: bytes | memoryview) -> Envelope:
    """Record bytes → Envelope; ``RecordError`` if the record is damaged."""
    if not check(data):
        raise RecordError("bad version or checksum")
    try:
        arrived, size, attempts, next_attempt, n = _HDR.unpack_from(data, _CRC.size)
        pos = _CRC.size + _HDR.size
        layout = _layout(n)
        values = layout.unpack_from(data, pos)
        pos += layout.size
        k = 6 + 4 * n
        fixed, lens = values[: 2 * n], values[2 * n :]
        if pos + sum(lens) > len(data):
            raise RecordError("truncated strings")
        blob = bytes(data[pos:])
        strs = []
        p = 0
        for ln in lens:
            strs.append(blob[p : p + ln].decode("utf-8", "surrogateescape"))
            p += ln
        rcpts = [Recipient(strs[j], STATES[fixed[2 * i]], strs[j + 1], strs[j + 2], strs[j + 3],
                           fixed[2 * i + 1]) for i, j in enumerate(range(6, k, 4))]  # fmt: skip
        pool, tenant = _tags(blob, p)
    except (struct.error, IndexError) as e:
        raise RecordError(f"damaged record: {e}") from None
    sender, last_error, client_ip, helo, listener, params_s = strs[:6]
    params = dict(p.split("=", 1) for p in params_s.split("\x00") if "=" in p) if params_s else {}
    return Envelope(msg_id, sender, rcpts, arrived, size, attempts, next_attempt, last_error,
                    client_ip, helo, listener, params, pool, tenant)  # fmt: skip


def _tags(blob: bytes, pos: int) -> tuple[str, str]:
    """The trailing (pool, tenant) block; ("", "") for a record written before it existed."""
    if len(blob) - pos < _TAGS.size:
        return "", ""
    a, b = _TAGS.unpack_from(blob, pos)
    pos += _TAGS.size
    if pos + a + b > len(blob):
        raise RecordError("truncated pool/tenant block")
    dec = [blob[pos : pos + a], blob[pos + a : pos + a + b]]
    return dec[0].decode("utf-8", "surrogateescape"), dec[1].decode("utf-8", "surrogateescape")
