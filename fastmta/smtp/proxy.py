# SPDX-License-Identifier: MIT
"""HAProxy PROXY protocol v1 and v2 headers (https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt).

Behind a TCP balancer the socket's peer is the balancer; the header it sends first
names the real client, which policy, limits, logs and ``Received:`` must use. Pure
parsing: ``parse(buf)`` says "need more", or how many octets the header took and
the client address ("" when the header names none: v1 UNKNOWN, v2 LOCAL/UNSPEC,
meaning "use the socket's peer"), or raises ``ProxyError``.
"""

from __future__ import annotations

import ipaddress

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107  # proxy-protocol.txt §2.1: the longest v1 line, CRLF included
V2_MAX = 16 + 65535
_V1_PREFIX = b"PROXY "


class ProxyError(ValueError):
    """Not a valid PROXY header: the connection is closed without a reply."""


def parse(buf: bytes) -> tuple[int, str] | None:
    """``None`` while incomplete, else (octets used, client address or "")."""
    head = buf[:12]
    if V2_SIGNATURE.startswith(head):
        return _v2(buf) if len(buf) >= 16 else None
    if _V1_PREFIX.startswith(buf[:6]):
        return _v1(buf)
    raise ProxyError("no PROXY header")


def _v1(buf: bytes) -> tuple[int, str] | None:
    end = buf.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(buf) >= V1_MAX:
            raise ProxyError("v1 header too long")
        return None
    parts = buf[:end].split(b" ")
    if parts[0] != b"PROXY" or len(parts) < 2:
        raise ProxyError("bad v1 header")
    if parts[1] == b"UNKNOWN":
        return end + 2, ""
    if parts[1] not in (b"TCP4", b"TCP6") or len(parts) != 6:
        raise ProxyError("bad v1 header")
    try:
        src = ipaddress.ip_address(parts[2].decode("ascii"))
        dst = ipaddress.ip_address(parts[3].decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise ProxyError("bad v1 address") from None
    if src.version != dst.version or src.version != (4 if parts[1] == b"TCP4" else 6):
        raise ProxyError("v1 address family mismatch")
    for port in parts[4:]:
        if not port.isdigit() or int(port) > 65535 or (len(port) > 1 and port.startswith(b"0")):
            raise ProxyError("bad v1 port")
    return end + 2, str(src)


def _v2(buf: bytes) -> tuple[int, str] | None:
    ver_cmd, fam = buf[12], buf[13]
    length = int.from_bytes(buf[14:16], "big")
    if ver_cmd >> 4 != 2:
        raise ProxyError("bad v2 version")
    if len(buf) < 16 + length:
        return None
    used = 16 + length
    cmd = ver_cmd & 0x0F
    if cmd == 0:  # LOCAL: the balancer's own health check
        return used, ""
    if cmd != 1:
        raise ProxyError("bad v2 command")
    family = fam >> 4
    if family == 1:  # AF_INET
        if length < 12:
            raise ProxyError("short v2 IPv4 block")
        return used, str(ipaddress.IPv4Address(buf[16:20]))
    if family == 2:  # AF_INET6
        if length < 36:
            raise ProxyError("short v2 IPv6 block")
        return used, str(ipaddress.IPv6Address(buf[16:32]))
    return used, ""  # AF_UNSPEC / AF_UNIX: keep the socket's peer


def v1_header(src: str, dst: str, sport: int, dport: int) -> bytes:
    """A v1 header (tests, the load generator)."""
    family = "TCP6" if ":" in src else "TCP4"
    return f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode("ascii")


def v2_header(src: str, dst: str, sport: int, dport: int, tlvs: bytes = b"") -> bytes:
    """A v2 PROXY header for TCP over IPv4 or IPv6 (tests, the load generator)."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    fam = 0x11 if s.version == 4 else 0x21
    block = s.packed + d.packed + sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + tlvs
    return V2_SIGNATURE + bytes([0x21, fam]) + len(block).to_bytes(2, "big") + block
