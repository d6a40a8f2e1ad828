# SPDX-License-Identifier: MIT
"""The HTTPS client of the TLS policies: MTA-STS policy fetches and TLS-RPT report posts.

aiohttp with three rules. Names resolve through our own ``Resolver`` (the
configured ``[dns]`` nameservers and the TTL cache), never the system's, so
``mta-sts.<domain>`` is looked up where the MX records were. Certificates are
verified against the system CAs or ``[delivery] tls_ca_file``. Redirects are
not followed (RFC 8461 §3.3), and bodies are read up to a limit, never more.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from fastmta.delivery.dns import DnsFailure, Resolver


class HttpError(Exception):
    """A request that did not give a usable answer; ``kind`` is a metric label."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind  # http_error | tls_error | timeout | too_large | error


class _OurDns(AbstractResolver):
    """aiohttp's resolver interface over fastmta's Resolver (A, then AAAA)."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        out: list[ResolveResult] = []
        for rdtype, fam in (("A", socket.AF_INET), ("AAAA", socket.AF_INET6)):
            try:
                addrs = await self.resolver.lookup(host, rdtype)
            except DnsFailure:
                continue
            out += [
                ResolveResult(
                    hostname=host, host=a, port=port, family=fam, proto=0, flags=socket.AI_NUMERICHOST
                )  # fmt: skip
                for a in addrs
            ]
        if not out:
            raise OSError(f"no address for {host}")
        return out

    async def close(self) -> None:
        pass


class HttpsClient:
    """One aiohttp session, made on first use (it needs the running loop)."""

    def __init__(self, resolver: Resolver, context: ssl.SSLContext, timeout: float = 30.0) -> None:
        self.resolver = resolver
        self.context = context
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(resolver=_OurDns(self.resolver), ssl=self.context,
                                             use_dns_cache=False, limit=20)  # fmt: skip
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"User-Agent": "fastmta"},
            )  # fmt: skip
        return self._session

    async def get(self, url: str, limit: int, content_type: str = "") -> bytes:
        """GET ``url``: the body of a 200 answer (of ``content_type`` when given), at most ``limit`` bytes."""
        return await self._request("GET", url, limit, content_type=content_type)

    async def post(self, url: str, body: bytes, content_type: str) -> None:
        """POST ``body``; any 2xx is success."""
        await self._request("POST", url, 4096, data=body, headers={"Content-Type": content_type})

    async def _request(self, method: str, url: str, limit: int, content_type: str = "", **kw: Any) -> bytes:
        try:
            async with self._get_session().request(method, url, allow_redirects=False, **kw) as resp:
                if not 200 <= resp.status < 300 or (method == "GET" and resp.status != 200):
                    raise HttpError("http_error", f"{method} {url}: HTTP {resp.status}")
                if content_type and resp.content_type != content_type:
                    raise HttpError("http_error", f"{url}: content type {resp.content_type}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_chunked(16384):
                    size += len(chunk)
                    if size > limit:
                        raise HttpError("too_large", f"{url}: more than {limit} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        except HttpError:
            raise
        except TimeoutError:
            raise HttpError("timeout", f"{method} {url}: timed out") from None
        except (aiohttp.ClientSSLError, ssl.SSLError) as e:
            raise HttpError("tls_error", f"{method} {url}: {e}") from None
        except (aiohttp.ClientError, OSError, ValueError) as e:
            raise HttpError("error", f"{method} {url}: {type(e).__name__}: {e}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
