# SPDX-License-Identifier: MIT
"""Big message bodies to the writer process through memory both processes map.

Over the socket a body is copied into the kernel by the loop and out of it by the
writer, with a socket buffer's bookkeeping on both sides. Through the ring the loop
copies it once into shared memory and the socket carries only where it is; the
writer hands LMDB a view of the ring. Space is handed out in order and taken back
in order, when the writer acknowledges the commit that stored it (after that the
writer never reads it again). The socket orders the two processes: the loop writes
a body before it sends the frame naming it, and reuses the space only after the
acknowledgement. A body that does not fit right now goes over the socket instead.
"""

from __future__ import annotations

import collections
import mmap
import os

RING_SIZE = 32 * 1024**2
RING_MIN_BODY = 32 * 1024  # smaller bodies go with their frame: one write either way


class BodyRing:
    """The loop's side: a ring of shared memory, a writer process maps the same file."""

    def __init__(self, size: int = RING_SIZE) -> None:
        self.size = size
        self.fd = os.memfd_create("fastmta-spool-bodies", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, size)
        self._map = mmap.mmap(self.fd, size)
        self._spans: collections.deque[tuple[int, int, int]] = collections.deque()  # (seq, start, end)

    def put(self, seq: int, parts: tuple[bytes, ...], n: int) -> int:
        """Copy ``parts`` (``n`` > 0 octets) in for the frame ``seq``; the offset, or -1 when full."""
        off = self._alloc(n)
        if off < 0:
            return -1
        pos = off
        for p in parts:
            self._map[pos : pos + len(p)] = p
            pos += len(p)
        self._spans.append((seq, off, off + n))
        return off

    def _alloc(self, n: int) -> int:
        spans = self._spans
        if not spans:
            return 0 if n <= self.size else -1
        oldest, head = spans[0][1], spans[-1][2]  # spans are never empty (n > 0)
        if head > oldest:  # in use: [oldest, head)
            if head + n <= self.size:
                return head
            return 0 if n <= oldest else -1  # wrap; the end of the ring waits for the oldest span
        return head if head + n <= oldest else -1  # wrapped, in use: [oldest, end) + [0, head)

    def release(self, seq: int) -> None:
        """The writer acknowledged every frame up to ``seq``: their space is free again."""
        spans = self._spans
        while spans and _seq_le(spans[0][0], seq):
            spans.popleft()

    def reset(self) -> None:
        """A new writer process: nothing in the ring is awaited any more."""
        self._spans.clear()

    def close(self) -> None:
        self._spans.clear()
        self._map.close()
        os.close(self.fd)


def _seq_le(a: int, b: int) -> bool:
    """``a`` was sent no later than ``b`` (sequence numbers wrap at 2**32)."""
    return ((b - a) & 0xFFFFFFFF) < 0x80000000


def view(fd: int, size: int) -> memoryview:
    """The writer's side: the whole ring, read-only."""
    return memoryview(mmap.mmap(fd, size, prot=mmap.PROT_READ))
