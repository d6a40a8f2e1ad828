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


_last = 0
# Not secret, only distinct: Mersenne Twister, reseeded in every forked child (random.py
# registers that), is 10x cheaper than os.urandom's system call per id.
_rand = random.getrandbits


def new_id() -> str:
    """A fresh, unique, time-sortable message id (strictly increasing within a process)."""
    global _last
    t = time.time_ns() // 1000
    t = _last = t if t > _last else _last + 1  # two ids in one microsecond keep their order
    n = t * _RAND_SPACE + _rand(48) % _RAND_SPACE
    out = []
    for _ in range(ID_LEN // 2):
        n, r = divmod(n, 3844)
        out.append(_PAIRS[r])
    return "".join(reversed(out))


def is_valid(msg_id: str) -> bool:
    """True for a well-formed id (what ``fastmta queue`` accepts on its command line)."""
    return len(msg_id) == ID_LEN and _VALID.issuperset(msg_id)


def id_time(msg_id: str) -> float:
    """Creation time (epoch seconds) encoded in an id."""
    n = 0
    for ch in msg_id[:_TIME_DIGITS]:
        n = n * 62 + ALPHABET.index(ch)
    return n / 1e6
