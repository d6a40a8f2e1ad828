# SPDX-License-Identifier: MIT
"""Message ids: 16 characters of [0-9A-Za-z], sortable by creation time.

Nine base-62 digits of microseconds since the epoch (good until the year 2398),
then seven random digits so that several worker processes sharing one spool never
collide. Safe in file names, log lines and LMDB keys (always 16 ASCII bytes).
"""

from __future__ import annotations

import os
import time

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ID_LEN = 16
_TIME_DIGITS = 9
_RAND_DIGITS = ID_LEN - _TIME_DIGITS
_RAND_SPACE = 62**_RAND_DIGITS
_VALID = frozenset(ALPHABET)


def _b62(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 62)
        out.append(ALPHABET[r])
    return "".join(reversed(out))


def new_id() -> str:
    """A fresh, unique, time-sortable message id."""
    rnd = int.from_bytes(os.urandom(8), "big") % _RAND_SPACE
    return _b62(time.time_ns() // 1000, _TIME_DIGITS) + _b62(rnd, _RAND_DIGITS)


def is_valid(msg_id: str) -> bool:
    """True for a well-formed id (what ``fastmta queue`` accepts on its command line)."""
    return len(msg_id) == ID_LEN and _VALID.issuperset(msg_id)


def id_time(msg_id: str) -> float:
    """Creation time (epoch seconds) encoded in an id."""
    n = 0
    for ch in msg_id[:_TIME_DIGITS]:
        n = n * 62 + ALPHABET.index(ch)
    return n / 1e6
