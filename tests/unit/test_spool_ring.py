# SPDX-License-Identifier: MIT
"""The shared body ring: space handed out in order, taken back in order, never overlapping."""

from __future__ import annotations

import random

from fastmta.spool.ring import BodyRing, view


def test_bodies_land_where_the_writer_reads_them() -> None:
    ring = BodyRing(1024)
    try:
        off = ring.put(1, (b"Received: x\r\n", b"body"), 17)
        assert bytes(view(ring.fd, ring.size)[off : off + 17]) == b"Received: x\r\nbody"
    finally:
        ring.close()


def test_full_then_freed_in_order_and_wraps() -> None:
    ring = BodyRing(100)
    try:
        assert [ring.put(s, (b"x" * 30,), 30) for s in (1, 2, 3)] == [0, 30, 60]
        assert ring.put(4, (b"x" * 30,), 30) == -1  # 10 left at the end, the start in use
        ring.release(1)
        assert ring.put(4, (b"y" * 30,), 30) == 0  # wraps into the freed start
        assert ring.put(5, (b"y",), 1) == -1  # wrapped: only [30, 30) is free
        ring.release(3)
        assert ring.put(5, (b"z" * 70,), 70) == 30
        assert ring.put(6, (b"z" * 101,), 101) == -1  # bigger than the ring: never
    finally:
        ring.close()


def test_sequence_numbers_wrap() -> None:
    ring = BodyRing(100)
    try:
        assert ring.put(0xFFFFFFFF, (b"a" * 50,), 50) == 0
        assert ring.put(1, (b"b" * 50,), 50) == 50
        ring.release(0xFFFFFFFF)
        assert ring.put(2, (b"c" * 50,), 50) == 0  # the first span is free, the second is not
        assert ring.put(3, (b"d",), 1) == -1
        ring.release(2)
        assert ring.put(3, (b"d",), 1) == 0
    finally:
        ring.close()


def test_random_use_never_overlaps_a_live_span() -> None:
    rnd = random.Random(7)
    ring = BodyRing(4096)
    live: list[tuple[int, int, int]] = []
    seq = 0
    try:
        for _ in range(5000):
            if live and rnd.random() < 0.4:
                upto = live[rnd.randrange(len(live))][0]
                ring.release(upto)
                live = [s for s in live if s[0] > upto]
                continue
            seq += 1
            n = rnd.randint(1, 1500)
            off = ring.put(seq, (b"x" * n,), n)
            if off < 0:
                continue
            assert off + n <= 4096
            assert all(off + n <= a or b <= off for _, a, b in live), (off, n, live)
            live.append((seq, off, off + n))
    finally:
        ring.close()
