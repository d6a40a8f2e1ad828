# SPDX-License-Identifier: MIT
"""Listening sockets, per-listener settings, and the hub every connection shares.

The ``Hub`` holds what is global to the process: connection counts (global and
per IP), AUTH-failure counts, the set of open connections, the coarse clock and
the sweeper that enforces command/data timeouts and the session bound (one timer
for all connections, not one per read). ``ListenerSettings`` is what a session needs to know about its
listener, built once (replies prebuilt) and rebuilt on SIGHUP.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import ssl
from typing import Any

from fastmta import metrics
from fastmta.config import Config, ConfigError, ListenerConfig, address_in_use
from fastmta.smtp import replies as R
from fastmta.smtp.auth import MAX_LINE as AUTH_MAX_LINE
from fastmta.smtp.auth import Users
from fastmta.smtp.policy import AuthFailures, ConnectionLimits, Policy
from fastmta.smtp.protocol import SmtpProtocol, Store


class ListenerSettings:
    """Everything a session and its protocol read about one listener (see session.Settings)."""

    def __init__(self, cfg: Config, lcfg: ListenerConfig, hub: Hub, policy: Policy, users: Users,
                 ssl_context: ssl.SSLContext | None) -> None:  # fmt: skip
        limits = cfg.limits
        self.hostname = cfg.hostname
        self.listener = lcfg.label
        self.submission = lcfg.mode == "submission"
        self.proxy_protocol = lcfg.proxy_protocol
        self.implicit_tls = lcfg.tls == "implicit"
        # bytes waiting at accept mean the client did not wait for the banner; with
        # implicit TLS (ClientHello) or PROXY (the header) they are expected
        self.pregreet_check = lcfg.tls != "implicit" and not lcfg.proxy_protocol
        self.starttls = lcfg.tls == "starttls" and ssl_context is not None
        self.ssl_context = ssl_context
        self.max_size = limits.max_message_size
        self.max_line = limits.max_line_length
        # the parser's limit: AUTH lines may be longer where AUTH can be offered (over TLS)
        auth_possible = bool(users) and (self.starttls or self.implicit_tls)
        self.parser_max_line = max(self.max_line, AUTH_MAX_LINE) if auth_possible else self.max_line
        self.max_recipients = limits.max_recipients
        self.max_errors = limits.max_errors
        self.max_hops = limits.max_hops
        self.bare_lf = limits.bare_lf
        self.command_timeout = limits.command_timeout
        self.data_timeout = limits.data_timeout
        self.max_session_time = limits.max_session_time
        self.policy = policy
        self.users = users
        self.auth_failures: AuthFailures = hub.auth_failures
        self.auth_failure_delay = cfg.policy.auth_failure_delay
        self.new_id = hub.new_id
        self.unhealthy = hub.unhealthy
        self.metrics = metrics.ListenerMetrics(lcfg.label)
        self.banner = R.banner(cfg.hostname)
        self._ehlo = {
            (tls, auth): R.ehlo(cfg.hostname, R.ehlo_keywords(self.max_size, tls, auth))
            for tls in (False, True)
            for auth in (False, True)
        }

    def ehlo_reply(self, starttls: bool, auth: bool) -> bytes:
        return self._ehlo[(starttls, auth)]

    def rejected(self, reason: str) -> None:
        self.metrics.rejected(reason).inc()


class Hub:
    """Process-wide state shared by every listener and connection."""

    def __init__(self, cfg: Config, store: Store, new_id: Any, unhealthy: Any) -> None:
        self.loop = asyncio.get_running_loop()
        self.store = store
        self.new_id = new_id
        self.unhealthy = unhealthy
        self.limits = ConnectionLimits(cfg.limits.max_connections, cfg.limits.max_connections_per_ip)
        self.auth_failures = AuthFailures(cfg.policy.max_auth_failures_per_ip)
        self.auth_executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fastmta-auth")
        self.connections: set[SmtpProtocol] = set()
        self.draining = False
        self.now = self.loop.time()
        self._tick = 1.0
        self._sweeper: asyncio.Task[None] | None = None
        self.configure(cfg)

    def configure(self, cfg: Config) -> None:
        """Apply (re)loaded limits: counters keep their values, ceilings change."""
        limits = cfg.limits
        self.limits.max_connections = limits.max_connections
        self.limits.max_per_ip = limits.max_connections_per_ip
        self.auth_failures.limit = cfg.policy.max_auth_failures_per_ip
        shortest = min(limits.command_timeout, limits.data_timeout, limits.max_session_time)
        self._tick = min(1.0, max(0.05, shortest / 10))

    def start(self) -> None:
        self._sweeper = self.loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        """Advance the coarse clock and close sessions idle past their timeout."""
        while True:
            await asyncio.sleep(self._tick)
            now = self.now = self.loop.time()
            for conn in list(self.connections):
                conn.check_timeout(now)

    def drain(self) -> None:
        self.draining = True
        for conn in list(self.connections):
            conn.drain()

    async def wait_idle(self, grace: float) -> bool:
        """Wait until every connection has closed, at most ``grace`` seconds."""
        deadline = self.loop.time() + grace
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        return not self.connections

    def abort_all(self) -> None:
        for conn in list(self.connections):
            conn.abort()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        self.auth_executor.shutdown(wait=False)


async def listen(
    hub: Hub, lcfg: ListenerConfig, settings_of: Any, reuse_port: bool = False
) -> asyncio.Server:
    """Bind one [[listener]]; ``settings_of()`` gives its current ListenerSettings (SIGHUP swaps it).

    ``reuse_port`` (SO_REUSEPORT) only for the workers of one supervisor, which share
    the address on purpose: a lone ``serve`` binding without it cannot start beside
    another process on the same address (the kernel would split the traffic between
    two spools and two configurations) but fails, naming the address.
    """
    host, port = lcfg.address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if lcfg.tls == "implicit" and lcfg.proxy_protocol:
        # the ClientHello may come in the same read as the PROXY header, and bytes
        # already read cannot be handed to the TLS layer
        raise ConfigError([f'listener {lcfg.label}: proxy_protocol is not supported with tls = "implicit"'])
    # Implicit TLS is not the server's ssl= but SmtpProtocol's own handshake after
    # admission: counted, logged, timed and given back like STARTTLS.
    with address_in_use(f"listener {lcfg.label}", lcfg.address):
        return await hub.loop.create_server(
            lambda: SmtpProtocol(hub, settings_of()),
            host=host, port=port, family=family, reuse_address=True,
            reuse_port=reuse_port and hasattr(socket, "SO_REUSEPORT"), backlog=1024,
        )  # fmt: skip
