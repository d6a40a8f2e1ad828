# SPDX-License-Identifier: MIT
"""Mail loops on the way out: messages that went round too often, next hops that are us.

Two checks, both ``5.4.6`` bounces with bounce class ``loop`` (never a delivery):

* too many hops: the reception side refuses a message that arrives with more than
  ``[limits] max_hops`` ``Received:``/``Delivered-To:`` fields; the stored copy
  carries our own ``Received:`` on top, so before delivery it may carry one more.
  This catches what did not come in over SMTP (local injection, an old queue).
* a next hop that is this server: an MX host or ``[[route]]`` next hop at the same
  address and port as one of our ``[[listener]]``s (a wildcard listener matches
  every address of this machine). As Postfix does, exchangers preferred less than
  or as much as ourselves are dropped (we are their backup); when nothing better is
  left, mail for the domain "loops back to myself" (a configuration error).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from fastmta.config import ListenerConfig
from fastmta.delivery import replies
from fastmta.delivery.mx import Host, MxError
from fastmta.errors import Bounced, Reply
from fastmta.smtp.trace import hops

_CACHE_MAX = 4096


def too_many_hops(message: bytes, max_hops: int) -> Bounced | None:
    """The bounce for a stored message with more hops than it may carry, else None."""
    if hops(message) > max_hops + 1:  # + 1: our own Received: line
        return Bounced(replies.TOO_MANY_HOPS, "loop")
    return None


def loops_back(domain: str) -> Bounced:
    return Bounced(Reply(554, "5.4.6", f"mail for {domain} loops back to myself"), "loop")


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _listening(host: str, port: int) -> list[tuple[str, int]]:
    """The (address, port) pairs a listener binds: its IP, or what its name resolves to."""
    if not host or _ip(host) is not None:  # "": every address
        return [(host, port)]
    try:  # a name such as "localhost": resolved the way the listener's bind resolved it
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return [(str(info[4][0]), port) for info in infos]


class OwnAddresses:
    """Where this server listens, to recognise a next hop that would be ourselves."""

    def __init__(self, listeners: Iterable[ListenerConfig]) -> None:
        self._exact: set[tuple[str, int]] = set()
        self._wild: dict[int, set[int]] = {}  # port → IP versions listened on every address
        for lst in listeners:
            for host, port in _listening(*lst.address):
                ip = _ip(host)
                if ip is None:  # "" listens on every address of both families
                    self._wild.setdefault(port, set()).update((4, 6))
                elif ip.is_unspecified:
                    self._wild.setdefault(port, set()).add(ip.version)
                else:
                    self._exact.add((str(ip), port))
        self._local: dict[str, bool] = {}

    def is_self(self, address: str, port: int) -> bool:
        """Whether connecting to ``address:port`` would reach one of our listeners."""
        ip = _ip(address)
        if ip is None:
            return False
        if (str(ip), port) in self._exact:
            return True
        versions = self._wild.get(port)
        return versions is not None and ip.version in versions and self._is_local(ip)

    def usable(self, hosts: list[Host], domain: str) -> list[Host]:
        """``hosts`` less ourselves and every host preferred no more than we are; MxError
        (a ``loops_back`` bounce) when that leaves none."""
        mine = [h.pref for h in hosts if self.is_self(h.address, h.port)]
        if not mine:
            return hosts
        better = [h for h in hosts if h.pref < min(mine)]
        if not better:
            raise MxError(loops_back(domain))
        return better

    def _is_local(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        """An address of this machine: loopback, or one a socket can bind to (cached)."""
        if ip.is_loopback or ip.is_unspecified:
            return True
        key = str(ip)
        known = self._local.get(key)
        if known is None:
            if len(self._local) >= _CACHE_MAX:
                self._local.clear()
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            try:
                with socket.socket(family, socket.SOCK_DGRAM) as s:
                    s.bind((key, 0))
                known = True
            except OSError:
                known = False
            self._local[key] = known
        return known
