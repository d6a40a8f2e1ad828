# SPDX-License-Identifier: MIT
"""SmtpDeliverer: one message to one destination over SMTP, per-recipient outcomes.

It finds the hosts (MX records, or a ``[[route]]`` next hop), takes an idle
connection from the pool or opens one (walking the hosts until one greets with
220 and, when TLS is required, verifies), checks that the hop can take the
message (SIZE, SMTPUTF8, 8BITMIME), runs one transaction and maps every reply to
Delivered, Deferred or Bounced with a bounce class. It never raises.

When every host refused the connection or said 421, every recipient is Deferred
with a 421 reply, which the scheduler reads as "throttle this destination".
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Awaitable
from typing import Any, Protocol

from fastmta.config import Config, RouteConfig, SourceConfig, is_localhost
from fastmta.delivery import Attempt, BodySource, Destination, ref, replies
from fastmta.delivery.capability import unfit
from fastmta.delivery.classify import classify, failure_outcome
from fastmta.delivery.client import HostError, SmtpClient, Transaction
from fastmta.delivery.dns import Resolver
from fastmta.delivery.loops import OwnAddresses, too_many_hops
from fastmta.delivery.mx import Host, MxError, addresses, resolve
from fastmta.delivery.pool import Pool
from fastmta.delivery.tlspolicy import VERIFIED_MODES, Plan, TlsPolicy, tls_optional
from fastmta.errors import Bounced, Deferred, Delivered, Outcome, Reply
from fastmta.smtp.commands import format_path, xtext_encode

log = logging.getLogger("fastmta.delivery")

DEAD_HOST_MEMORY = 60.0  # seconds a host that refused or timed out is tried after the others
RELAXED_POOL = " tls-optional"  # pool key suffix of sessions for "TLS-Required: No" mail


class Signer(Protocol):
    """DKIM (fastmta.dkim.service): the fields to prepend and their d= domains."""

    def sign(self, msg_id: str, arrived: float, message: bytes) -> Awaitable[tuple[bytes, tuple[str, ...]]]:
        """Awaitable, not necessarily a coroutine: the signer may hand back one future."""


class SmtpDeliverer:
    """The Deliverer for remote domains and routes (see fastmta.delivery)."""

    def __init__(self, cfg: Config, spool: BodySource, resolver: Resolver | None = None,
                 signer: Signer | None = None, tls: TlsPolicy | None = None) -> None:  # fmt: skip
        self.cfg = cfg
        self.spool = spool
        self.signer = signer
        self.resolver = resolver or Resolver(cfg.dns)
        d = cfg.delivery
        self.pool: Pool[SmtpClient] = Pool(d.max_messages_per_connection, d.idle_timeout)
        self._dead: dict[tuple[str, int], float] = {}  # unreachable → tried last until
        self.tls = tls or TlsPolicy(cfg, self.resolver)
        self._credentials: dict[str, tuple[int, tuple[str, str] | None]] = {}  # path → (mtime, creds)
        self._own = OwnAddresses(cfg.listeners)
        self._refs: ref.Signer | None = None  # read on first use (serve checks the key at start)

    async def close(self) -> None:
        await self.pool.close()
        await self.tls.close()

    async def hang_up(self, key: str, keep: int = 0) -> int:
        return await self.pool.drop(key, keep)

    def reload(self, cfg: Config) -> None:
        """SIGHUP: new settings apply from the next delivery.

        Idle connections are closed (one may lead to the old port, or lack the TLS now
        required); those in use finish their transaction. The DNS cache survives unless
        ``[dns]`` changed; CA file, credentials and the complaint-token key are re-read.
        """
        if cfg.dns != self.cfg.dns:
            self.resolver = Resolver(cfg.dns)
        self.cfg = cfg
        self.pool.max_messages = cfg.delivery.max_messages_per_connection
        self.pool.idle_timeout = cfg.delivery.idle_timeout
        self.pool.retire_idle()
        self.tls.reload(cfg, self.resolver)
        self._credentials.clear()
        self._own = OwnAddresses(cfg.listeners)
        self._refs = None

    async def deliver(self, dest: Destination, envelope: Any, rcpts: list[int]) -> Attempt:
        start = time.monotonic()
        try:
            attempt = await self._deliver(dest, envelope, rcpts)
        except Exception:
            log.exception("delivery of %s to %s failed unexpectedly", envelope.id, dest.key)
            attempt = Attempt({i: Deferred(replies.INTERNAL, "other") for i in rcpts})
        attempt.elapsed = time.monotonic() - start
        return attempt

    # --- the attempt ------------------------------------------------------------------------
    async def _deliver(self, dest: Destination, envelope: Any, rcpts: list[int]) -> Attempt:
        if not rcpts:
            return Attempt()
        body = self.spool.body(envelope.id)
        if body is None:
            return Attempt(dict.fromkeys(rcpts, Deferred(replies.NO_BODY, "other")))
        looped = too_many_hops(body, self.cfg.limits.max_hops)
        if looped is not None:
            return Attempt(dict.fromkeys(rcpts, looped))
        dkim: tuple[str, ...] = ()
        if self.signer is not None:
            try:
                fields, dkim = await self.signer.sign(envelope.id, envelope.arrived, body)
            except Exception as e:
                log.warning(
                    "DKIM signing of %s failed (%s); delivery deferred", envelope.id, type(e).__name__
                )
                return Attempt(dict.fromkeys(rcpts, Deferred(replies.DKIM_UNAVAILABLE, "other")))
            body = fields + body if fields else body
        # the complaint token (not signed by DKIM): names the recipient when this transaction carries only one
        if self._refs is None:
            self._refs = ref.Signer(ref.load_key(self.cfg))
        body = self._refs.header(envelope.id, envelope.rcpts[rcpts[0]].addr if len(rcpts) == 1 else "",
                                envelope.tenant) + body  # fmt: skip
        attempt = await self._transmit(dest, envelope, rcpts, body)
        attempt.dkim = dkim
        return attempt

    async def _transmit(self, dest: Destination, envelope: Any, rcpts: list[int], body: bytes) -> Attempt:
        requiretls = "REQUIRETLS" in envelope.params
        relaxed = not requiretls and tls_optional(body)
        if relaxed:  # its sessions skip the domain's TLS policy: never share them with other mail
            dest = dataclasses.replace(dest, key=dest.key + RELAXED_POOL)
        client = self.pool.get(dest.key)
        if client is not None and requiretls and not client.verified:
            await self.pool.release(dest.key, client)
            client = None
        if client is not None:
            attempt = await self._send(dest, client, envelope, rcpts, body, reused=True)
            if attempt is not None:
                return attempt
        client_or_failure = await self._connect(dest, rcpts, requiretls, relaxed)
        if isinstance(client_or_failure, Attempt):
            return client_or_failure
        attempt = await self._send(dest, client_or_failure, envelope, rcpts, body, reused=False)
        assert attempt is not None
        return attempt

    async def _send(self, dest: Destination, client: SmtpClient, envelope: Any, rcpts: list[int],
                    body: bytes, reused: bool) -> Attempt | None:  # fmt: skip
        """One transaction; None when a reused connection turned out dead before any reply."""
        try:
            return await self._transactions(dest, client, envelope, rcpts, body, reused)
        except BaseException:  # cancelled (shutdown) or a bug: never leave a half-used session open
            client.abort()
            raise

    async def _transactions(self, dest: Destination, client: SmtpClient, envelope: Any, rcpts: list[int],
                            body: bytes, reused: bool) -> Attempt | None:  # fmt: skip
        refusal = _unfit(client, envelope, rcpts, body)
        if refusal is not None:
            await self.pool.release(dest.key, client)
            return Attempt(dict.fromkeys(rcpts, refusal), client.nexthop, client.tls,
                           tls_policy=client.policy)  # fmt: skip
        outcomes: dict[int, Outcome] = {}
        pending = rcpts
        while True:
            mail, rcpt_lines = mail_commands(client, envelope, pending, body)
            tx = await client.send(mail, rcpt_lines, body, reset=reused and client.needs_reset)
            if reused and not outcomes and (tx.mail is None or tx.mail.code == 421):
                client.abort()  # died while idle, or "421 reconnect": the caller opens a fresh one
                return None
            outcomes.update(rcpt_outcomes(tx, pending))
            # RFC 5321 §4.5.3.1.10: "452 too many recipients" → the rest in another transaction
            more = [i for i, r in zip(pending, tx.rcpts, strict=True) if r is not None and r.code == 452]
            if not more or len(more) == len(pending) or tx.data is None or tx.data.code >= 400:
                break
            if not client.usable or client.messages >= self.cfg.delivery.max_messages_per_connection:
                break
            pending, reused = more, True
        await self.pool.release(dest.key, client)
        return Attempt(outcomes, client.nexthop, client.tls, dsn_passed="DSN" in client.ext,
                       tls_policy=client.policy)  # fmt: skip

    async def _connect(self, dest: Destination, rcpts: list[int], requiretls: bool = False,
                       relaxed: bool = False) -> SmtpClient | Attempt:  # fmt: skip
        """A ready session to the first host that works, or the Attempt saying why none did."""
        route = dest.route
        try:
            hosts = await self._hosts(dest)
        except MxError as e:
            return Attempt(dict.fromkeys(rcpts, e.outcome))
        plan = await self.tls.plan(dest, hosts, relaxed)
        hosts = self.tls.hosts_for(plan, hosts)
        if requiretls:  # RFC 8689 §4.2.1: only hosts we can authenticate
            hosts = [h for h in hosts if plan.mode(h) in VERIFIED_MODES]
            if not hosts:
                return Attempt(dict.fromkeys(rcpts, Bounced(replies.REQUIRETLS_UNVERIFIED, "tls")),
                               tls_policy=plan.kind)  # fmt: skip
        if not hosts:
            return Attempt(dict.fromkeys(rcpts, Deferred(replies.STS_NO_MX, "tls")), tls_policy=plan.kind)
        failures: list[HostError] = []
        last_host = ""
        for host in self._alive_first(hosts):
            last_host = str(host)
            try:
                client = await self._session(host, plan, route, dest)
            except HostError as e:
                failures.append(e)
                if e.kind in ("refused", "timeout"):
                    self._dead[(host.address, host.port)] = time.monotonic() + DEAD_HOST_MEMORY
                continue
            self._dead.pop((host.address, host.port), None)
            return client
        return Attempt(dict.fromkeys(rcpts, _connect_failure(failures)), last_host, tls_policy=plan.kind)

    def _alive_first(self, hosts: list[Host]) -> list[Host]:
        """Hosts that recently refused or timed out go last (a blackholed primary MX would
        otherwise cost a full connect timeout on every new connection)."""
        if not self._dead:
            return hosts
        now = time.monotonic()
        for key in [k for k, until in self._dead.items() if until < now]:
            del self._dead[key]
        dead = [h for h in hosts if (h.address, h.port) in self._dead]
        return [h for h in hosts if (h.address, h.port) not in self._dead] + dead if dead else hosts

    async def _hosts(self, dest: Destination) -> list[Host]:
        """The hosts to try, best first, never ourselves; MxError when there are none."""
        if is_localhost(dest.domain) and (dest.route is None or dest.route.domain != dest.domain):
            raise MxError(Bounced(replies.NOT_LOCAL_LOCALHOST, "bad_domain"))  # only a route of its own
        if dest.route is None:
            found = await resolve(self.resolver, dest.domain, self.cfg.delivery.port)
        else:
            host, port = dest.route.nexthop
            route_hosts = await addresses(self.resolver, host, port)
            if route_hosts is None:
                raise MxError(Deferred(replies.DNS_TEMPFAIL, "dns"))
            if not route_hosts:
                raise MxError(Deferred(replies.MX_NO_ADDRESS, "dns"))
            found = route_hosts
        return self._own.usable(found, dest.domain)

    async def _session(
        self, host: Host, plan: Plan, route: RouteConfig | None, dest: Destination
    ) -> SmtpClient:
        source = dest.source
        helo = source.ehlo if source is not None else self.cfg.hostname
        client = await self._open(host, source)
        try:
            client = await self.tls.secure(client, host, plan, lambda: self._open(host, source), helo)
            if route is not None and route.auth_file:
                await self._authenticate(client, route)
        except BaseException:
            client.abort()
            raise
        return client

    async def _open(self, host: Host, source: SourceConfig | None = None) -> SmtpClient:
        d = self.cfg.delivery
        if source is None:
            return await SmtpClient.open(host, self.cfg.hostname, d.connect_timeout, d.command_timeout)
        return await SmtpClient.open(host, source.ehlo, d.connect_timeout, d.command_timeout, source.address)

    async def _authenticate(self, client: SmtpClient, route: RouteConfig) -> None:
        creds = self._read_credentials(route.auth_file)
        if creds is None:
            raise HostError(replies.AUTH_FILE, "auth")
        if "AUTH" not in client.ext:
            raise HostError(replies.AUTH_UNAVAILABLE, "auth")
        reply = await client.auth(*creds)
        if reply is None or reply.code != 235:
            text = f"{replies.AUTH_FAILED.text}: {reply}" if reply is not None else replies.AUTH_FAILED.text
            raise HostError(Reply(replies.AUTH_FAILED.code, replies.AUTH_FAILED.enhanced, text), "auth")

    def _read_credentials(self, path: str) -> tuple[str, str] | None:
        """``user:password`` from the first non-comment line; re-read when the file changes;
        never logged."""
        try:
            stamp = os.stat(path).st_mtime_ns
        except OSError:
            log.error("cannot read route auth_file %s", path)
            return None
        cached = self._credentials.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        creds = None
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    line = line.strip()
                    if line and not line.startswith("#") and ":" in line:
                        user, _, password = line.partition(":")
                        creds = (user, password)
                        break
        except (OSError, UnicodeDecodeError):
            log.error("cannot read route auth_file %s", path)
        self._credentials[path] = (stamp, creds)
        return creds


# --- pure helpers -------------------------------------------------------------------------------


def _connect_failure(failures: list[HostError]) -> Deferred:
    """Every host failed: the last 421 if each refused, timed out or said 421, else the last reason.

    Refused and timed-out connects already carry a 421 reply naming the host (SmtpClient.open).
    """
    if not failures:
        return Deferred(replies.MX_NO_ADDRESS, "dns")
    last = failures[-1]
    if all(f.reply.code == 421 for f in failures):
        return Deferred(last.reply, "timeout" if last.kind == "timeout" else classify(last.reply))
    reply = last.reply
    if reply.code >= 500 or reply.code < 400:  # a 5xx greeting only skips the host (as Postfix)
        reply = Reply(451, "4" + reply.enhanced[1:] if reply.enhanced else "4.0.0", reply.text)
    cls = "tls" if last.kind in ("tls", "starttls") else classify(reply)
    return Deferred(reply, cls)


def _unfit(client: SmtpClient, envelope: Any, rcpts: list[int], body: bytes) -> Bounced | None:
    """A reason this hop cannot take this message at all, checked before MAIL. Bodies in the
    spool are already CRLF-canonical (the listener made them so), so BDAT sends them as is."""
    if "REQUIRETLS" in envelope.params:  # RFC 8689 §4.2.1: verified TLS and a hop that passes it on
        if not client.verified:
            return Bounced(replies.REQUIRETLS_UNVERIFIED, "tls")
        if "REQUIRETLS" not in client.ext:
            return Bounced(replies.REQUIRETLS_NOT_OFFERED, "tls")
    addrs = (envelope.rcpts[i].addr for i in rcpts)
    return unfit(client.ext, envelope.sender, addrs, envelope.params, body)


def mail_commands(
    client: SmtpClient, envelope: Any, rcpts: list[int], body: bytes
) -> tuple[bytes, list[bytes]]:
    """MAIL and RCPT lines with the parameters this hop understands."""
    ext = client.ext
    params = envelope.params
    mail: dict[str, str] = {}
    if "SIZE" in ext:
        mail["SIZE"] = str(len(body))
    if params.get("BODY") == "8BITMIME" and "8BITMIME" in ext:
        mail["BODY"] = "8BITMIME"
    if "SMTPUTF8" in params and "SMTPUTF8" in ext:
        mail["SMTPUTF8"] = ""
    dsn = "DSN" in ext
    if dsn and params.get("RET"):
        mail["RET"] = params["RET"]
    if dsn and params.get("ENVID"):
        mail["ENVID"] = xtext_encode(params["ENVID"])
    if "REQUIRETLS" in params and "REQUIRETLS" in ext:
        mail["REQUIRETLS"] = ""
    lines = []
    for i in rcpts:
        r = envelope.rcpts[i]
        rparams: dict[str, str] = {}
        if dsn and r.notify:
            rparams["NOTIFY"] = r.notify
        if dsn and r.orcpt:
            kind, _, addr = r.orcpt.partition(";")
            rparams["ORCPT"] = f"{kind};{xtext_encode(addr)}"
        lines.append(f"RCPT TO:{format_path(r.addr, rparams)}\r\n".encode())
    return f"MAIL FROM:{format_path(envelope.sender, mail)}\r\n".encode(), lines


def rcpt_outcomes(tx: Transaction, rcpts: list[int]) -> dict[int, Outcome]:
    """Per recipient: its RCPT reply if that failed, else the final reply."""
    if tx.mail is None or tx.mail.code >= 400:
        return dict.fromkeys(rcpts, _failure(tx.mail, tx.error))
    out: dict[int, Outcome] = {}
    final = tx.data
    # a 421 closes the channel: recipients left unanswered share it (the throttle cue)
    closing = next((r for r in tx.rcpts if r is not None and r.code == 421), None)
    unanswered = _failure(closing, "") if closing is not None else _failure(None, tx.error)
    for i, r in zip(rcpts, tx.rcpts, strict=True):
        if r is None:
            out[i] = unanswered
        elif r.code >= 400:
            out[i] = _failure(r, "")
        elif final is None:
            out[i] = unanswered
        elif final.code < 400:
            out[i] = Delivered(final)
        else:
            out[i] = _failure(final, "")
    return out


def _failure(reply: Reply | None, error: str) -> Deferred | Bounced:
    if reply is None:
        if error == "timeout":
            return Deferred(replies.TIMEOUT, "timeout")
        return Deferred(replies.CONNECTION_LOST, "connection")
    return failure_outcome(reply)
