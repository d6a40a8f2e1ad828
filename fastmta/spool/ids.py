# SPDX-License-Identifier: MIT
"""Message ids: 16 characters of [0-9A-Za-z], sortable by creation time.

Nine base-62 digits of microseconds since the epoch (good until the year 2398),
then seven random digits so that several worker processes sharing one spool never
collide (within a process the time part alone is strictly increasing). Safe in
file names, log lines and LMDB keys (always 16 ASCII bytes).
"""

from __future__ import annotations

import random
import time

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ID_LEN = 16
_TIME_DIGITS = 9
_RAND_DIGITS = ID_LEN - _TIME_DIGITS
_RAND_SPACE = 62**_RAND_DIGITS
_VALID = frozenset(ALPHABET)


_PAIRS = [a + b for a in ALPHABET for b in ALPHABET]  # two digits per divmod: 8, not 16
_LOW = 62**3  # the last three time digits; the six before them change every 0.24 s


_last = 0
_high = -1  # t // _LOW of the last id, and its six digits
_high_digits = ""
# Not secret, only distinct: Mersenne Twister, reseeded in every forked child (random.py
# registers that), is 10x cheaper than os.urandom's system call per id.
_rand = random.getrandbits


def new_id() -> str:
    """A fresh, unique, time-sortable message id (strictly increasing within a process).

    One id per message on the receive path: the time's first six digits are kept
    between calls, and every divmod is of machine-sized ints (no 96-bit number).
    """
    global _last, _high, _high_digits
    t = time.time_ns() // 1000
    t = _last = t if t > _last else _last + 1  # two ids in one microsecond keep their order
    high, low = divmod(t, _LOW)
    if high != _high:
        _high, _high_digits = high, digits(high, 6)
    a, b = divmod(_rand(48) % _RAND_SPACE, 3844)
    a, c = divmod(a, 3844)
    a, d = divmod(a, 3844)
    hi, lo = ALPHABET[low // 3844], _PAIRS[low % 3844]
    out: str = f"{_high_digits}{hi}{lo}{ALPHABET[a]}{_PAIRS[d]}{_PAIRS[c]}{_PAIRS[b]}"
    return out


def digits(n: int, width: int) -> str:
    """``n`` in base 62, zero-padded to ``width`` digits (the definition ``new_id`` must equal)."""
    out = ""
    for _ in range(width):
        n, r = divmod(n, 62)
        out = ALPHABET[r] + out
    return out


def is_valid(msg_id: str) -> bool:
    """True for a well-formed id (what ``fastmta queue`` accepts on its command line)."""
    return len(msg_id) == ID_LEN and _VALID.issuperset(msg_id)


def id_time(msg_id: str) -> float:
    """Creation time (epoch seconds) encoded in an id."""
    n = 0
    for ch in msg_id[:_TIME_DIGITS]:
        n = n * 62 + ALPHABET.index(ch)
    return n / 1e6
