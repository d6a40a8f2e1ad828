# SPDX-License-Identifier: MIT
"""Sending pools: which pool a message uses and which source address each delivery leaves from.

A message's pool is the one its ``X-Fastmta-Pool`` header named at reception (kept in
the envelope), else the first ``[[pool]]`` whose ``sender_domains`` holds the envelope
sender's domain, else the default pool (no bind, ``hostname`` as EHLO). Within a pool
each message takes the next source by smooth weighted round-robin (the interleaving
nginx uses: weights 1 and 2 give a b b a b b …, never long runs), and its destinations
become per-source destinations: their own queue, connection limit, rate, suspension
and idle connections. Pure apart from that round-robin state.
"""

from __future__ import annotations

import socket

from fastmta.config import Config, PoolConfig, SourceConfig
from fastmta.delivery import Destination

DEFAULT = "default"


class _RoundRobin:
    """Smooth weighted round-robin over a pool's sources."""

    __slots__ = ("sources", "weights", "current", "total")

    def __init__(self, pool: PoolConfig) -> None:
        self.sources = pool.sources
        self.weights = [s.weight for s in pool.sources]
        self.current = [0] * len(pool.sources)
        self.total = sum(self.weights)

    def next(self) -> SourceConfig:
        cur = self.current
        best = 0
        for i, w in enumerate(self.weights):
            cur[i] += w
            if cur[i] > cur[best]:
                best = i
        cur[best] -= self.total
        return self.sources[best]


class Sources:
    """The configured pools; rebuilt on SIGHUP."""

    def __init__(self, cfg: Config) -> None:
        self._rr = {p.name: _RoundRobin(p) for p in cfg.pools}
        self._by_domain: dict[str, str] = {}
        for p in cfg.pools:
            for d in p.sender_domains:
                self._by_domain.setdefault(d, p.name)
        self._bound: dict[tuple[str, str, str], Destination] = {}

    def pool_of(self, pool: str, sender: str) -> str:
        """The pool of a message: the one stored with it if it still exists, else by sender domain."""
        if pool in self._rr:
            return pool
        if self._by_domain:
            return self._by_domain.get(sender.rpartition("@")[2].lower(), DEFAULT)
        return DEFAULT

    def pick(self, pool: str) -> SourceConfig | None:
        """The next source of ``pool`` (None: the default pool, which binds nothing)."""
        rr = self._rr.get(pool)
        return rr.next() if rr is not None else None

    def bind(self, dest: Destination, pool: str, source: SourceConfig | None) -> Destination:
        """``dest`` as reached from ``source`` of ``pool`` (one object per combination, cached)."""
        addr = source.address if source is not None else ""
        k = (dest.key, pool, addr)
        hit = self._bound.get(k)
        if hit is None:
            if len(self._bound) > 100_000:
                self._bound.clear()
            key = f"{dest.key}/{addr}" if addr else dest.key
            hit = self._bound[k] = Destination(key, dest.domain, dest.route, source, pool)
        return hit


def base_key(dest: Destination) -> str:
    """The destination key without its source part."""
    return dest.key.rpartition("/")[0] if dest.source is not None else dest.key


def unbindable(cfg: Config) -> list[str]:
    """Every source address this host cannot bind, as start-up errors naming it."""
    errors = []
    for i, pool in enumerate(cfg.pools):
        for j, src in enumerate(pool.sources):
            family = socket.AF_INET6 if ":" in src.address else socket.AF_INET
            try:
                with socket.socket(family, socket.SOCK_STREAM) as s:
                    s.bind((src.address, 0))
            except OSError as e:
                errors.append(f"pool[{i}].sources[{j}].address: cannot bind {src.address}: {e.strerror}")
    return errors
