# SPDX-License-Identifier: MIT
"""Who may send what where: relay decisions, connection limits and AUTH-failure limits.

Decisions are pure functions of the configuration and the client; the two small
counters (connections per IP, AUTH failures per IP) are the only state, bounded in
size, and owned by the event loop thread. Nothing here does I/O or DNS.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from functools import lru_cache

from fastmta.config import Config, is_localhost


class Policy:
    """Relay rules from ``[policy]``; rebuilt on SIGHUP."""

    def __init__(self, cfg: Config, mailbox_exists: Callable[[str], bool] | None = None) -> None:
        """``mailbox_exists(addr)`` answers for ``local_domains`` addresses (the composition root
        passes delivery.local's check; policy itself never imports delivery)."""
        p = cfg.policy
        self._mailbox_exists = mailbox_exists
        self._networks = p.relay_networks
        self._accept_domains = frozenset(p.relay_domains) | frozenset(p.local_domains)
        self.local_domains = frozenset(p.local_domains)
        self.pools = frozenset(pool.name for pool in cfg.pools)  # names X-Fastmta-Pool may give
        self._relay_client = lru_cache(maxsize=4096)(self._in_networks)

    def _in_networks(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr.version == net.version and addr in net for net in self._networks)

    def is_relay_client(self, ip: str) -> bool:
        """True when ``ip`` is inside ``relay_networks`` (may relay anywhere without AUTH)."""
        return bool(self._relay_client(ip))

    def mailbox_exists(self, domain: str, addr: str) -> bool:
        """False only for a ``local_domains`` address with no mailbox (550 5.1.1 at RCPT)."""
        if self._mailbox_exists is None or domain not in self.local_domains:
            return True
        return self._mailbox_exists(addr)

    def may_send_to(self, domain: str, relay_client: bool, authenticated: bool) -> bool:
        """RCPT rule: accepted domains from anyone, everything else only from trusted clients.
        A ``localhost`` name that is not a local domain is refused to everyone: relayed, it
        would be looked up in DNS and come back here."""
        if domain in self._accept_domains:
            return True
        return (relay_client or authenticated) and not is_localhost(domain)


class ConnectionLimits:
    """Counts open connections, globally and per client IP (``[limits]``)."""

    def __init__(self, max_connections: int, max_per_ip: int) -> None:
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.total = 0
        self._per_ip: dict[str, int] = {}

    def admit(self, ip: str) -> str | None:
        """Count a new connection, or say why it is refused: ``"global"`` or ``"per_ip"``."""
        if self.total >= self.max_connections:
            return "global"
        n = self._per_ip.get(ip, 0)
        if n >= self.max_per_ip:
            return "per_ip"
        self._per_ip[ip] = n + 1
        self.total += 1
        return None

    def release(self, ip: str) -> None:
        n = self._per_ip.get(ip, 0) - 1
        if n > 0:
            self._per_ip[ip] = n
        else:
            self._per_ip.pop(ip, None)
        self.total -= 1

    def count(self, ip: str) -> int:
        return self._per_ip.get(ip, 0)


class AuthFailures:
    """AUTH failures per client IP; an IP over the limit is refused until it stays quiet.

    A failure older than ``window`` seconds is forgotten. The table holds at most
    ``max_entries`` IPs (the oldest entries go first), so a spray of addresses cannot
    grow memory without bound.
    """

    def __init__(self, limit: int, window: float = 900.0, max_entries: int = 65536,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.limit = limit
        self.window = window
        self.max_entries = max_entries
        self._clock = clock
        self._seen: dict[str, tuple[int, float]] = {}

    def blocked(self, ip: str) -> bool:
        entry = self._seen.get(ip)
        if entry is None:
            return False
        if self._clock() - entry[1] > self.window:
            del self._seen[ip]
            return False
        return entry[0] >= self.limit

    def failed(self, ip: str) -> None:
        now = self._clock()
        count, last = self._seen.pop(ip, (0, now))
        if now - last > self.window:
            count = 0
        self._seen[ip] = (count + 1, now)
        while len(self._seen) > self.max_entries:
            del self._seen[next(iter(self._seen))]

    def succeeded(self, ip: str) -> None:
        self._seen.pop(ip, None)
