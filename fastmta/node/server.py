# SPDX-License-Identifier: MIT
"""Composition root: builds spool, delivery, listeners and metrics from Config; start/stop order.

Start: open the spool (recovery), start its committer, start delivery, bind every
listener, start the metrics exporter, then print where everything is (stderr;
stdout is the JSON delivery log only). SIGTERM/SIGINT: new connections get 421,
idle sessions get 421, transactions in flight finish (bounded by
``server.shutdown_grace``), then delivery stops and the spool closes. SIGHUP:
reload policy, limits, users, TLS certificates, API tokens, ``[[webhook]]`` entries
and the delivery side's settings without dropping a connection.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Any

from fastmta import config as config_mod
from fastmta import parser
from fastmta.api import app as api
from fastmta.cluster.limits import Cluster
from fastmta.cluster.suppression import SuppressionSync
from fastmta.config import Config, ConfigError, address_in_use
from fastmta.delivery import ref, sources
from fastmta.delivery.dns import Resolver
from fastmta.delivery.feedback import FeedbackDeliverer
from fastmta.delivery.local import LocalDeliverer, local_recipient_exists
from fastmta.delivery.mtasts import PolicyCache
from fastmta.delivery.smtp import SmtpDeliverer
from fastmta.delivery.tlspolicy import TlsPolicy
from fastmta.delivery.tlsrpt import TlsReports, queue_into
from fastmta.delivery.tlsstate import StateFile, state_dir
from fastmta.deliverylog import DeliveryLog
from fastmta.dkim.service import DkimService
from fastmta.node.exporter import serve_metrics
from fastmta.scheduler import start_delivery
from fastmta.smtp import tls
from fastmta.smtp.auth import AuthConfigError, Users
from fastmta.smtp.listener import Hub, ListenerSettings, listen
from fastmta.smtp.policy import Policy
from fastmta.smtp.protocol import CommitDone
from fastmta.smtp.session import Transaction
from fastmta.spool import Envelope, Recipient, Spool, new_id
from fastmta.spool.suppression import SuppressionList
from fastmta.webhook import WebhookService

log = logging.getLogger("fastmta.server")
# Starts the one stderr line every unhandled loop exception gets (the test harness fails on it).
LOOP_EXCEPTION = "unhandled exception in the event loop"


class SpoolStore:
    """Adapts the spool to what a session commits (``protocol.Store``)."""

    def __init__(self, spool: Spool) -> None:
        self._put = spool.put_then

    def put(self, msg_id: str, txn: Transaction, head: bytes, body: bytes, done: CommitDone) -> None:
        rcpts = [Recipient(addr, orcpt=orcpt, notify=notify) for addr, notify, orcpt in txn.rcpts]
        env = Envelope(msg_id, txn.sender, rcpts, client_ip=txn.client_ip, helo=txn.helo,
                       listener=txn.listener, params=txn.params, pool=txn.pool,
                       tenant=txn.tenant or txn.user)  # fmt: skip
        self._put(env, body, head, done)


def _loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """An exception no task or callback handled is a bug: one line that says so, then
    asyncio's own report with the traceback."""
    log.error("%s: %s", LOOP_EXCEPTION, context.get("message", ""))
    loop.default_exception_handler(context)


def say(text: str) -> None:
    """A human-readable start-up/shutdown line: stderr, never stdout."""
    print(f"fastmta: {text}", file=sys.stderr, flush=True)


class Server:
    """One running fastmta process (with ``[server] workers = N``, one per worker)."""

    reuse_port = False  # SO_REUSEPORT: only workers share their listening addresses
    index = 0  # a worker's number; node-wide tasks (the suppression list's sync) run in number 0

    def __init__(self, cfg: Config, config_path: str | None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.node_spool = cfg.spool  # the node's whole spool (a worker's cfg names its shard)
        self.workers = 1
        self.stopping = False
        self.ready = False
        self._stop = asyncio.Event()
        self._settings: dict[str, ListenerSettings] = {}
        self._servers: list[asyncio.Server] = []
        self.hub: Hub | None = None
        self.delivery: Any = None
        self.dkim: DkimService | None = None
        self.tls_reports: TlsReports | None = None
        self.webhooks: WebhookService | None = None
        self.api_ctx: api.Context | None = None
        self._api: Any = None  # the HTTP API's runner
        self.cluster: Cluster | None = None
        self.suppression_sync: SuppressionSync | None = None
        self._reload_pending = False  # a SIGHUP during start-up, applied once ready

    async def run(self) -> int:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_loop_exception)
        # Before anything listens: a signal in the start-up window must not take its
        # default action (a SIGHUP right after the first banner killed the process).
        for sig, handler in (
            (signal.SIGTERM, self.stop),
            (signal.SIGINT, self.stop),
            (signal.SIGHUP, self.reload),
        ):
            loop.add_signal_handler(sig, handler)
        users = Users.load(cfg.policy.users_file)
        ssl_context = tls.server_context(cfg)
        _check_sending(cfg)
        self.dkim = DkimService(cfg.dkim) if cfg.dkim else None  # a bad key stops us here
        spool = self.spool = Spool.open(cfg.spool)
        await spool.start()
        self.dlog = DeliveryLog(cfg.log.file, node=cfg.cluster.node_id)
        if cfg.webhooks:
            self.webhooks = WebhookService(cfg.webhooks, spool, self.dlog)
            self.webhooks.start()
        self.suppression = SuppressionList.open(cfg.spool, shared=bool(cfg.cluster.redis))
        feedback = (
            FeedbackDeliverer(cfg, spool, self.suppression, self.dlog)
            if cfg.suppression.fbl_addresses
            else None
        )
        if self.dkim is not None:
            await self.dkim.start()
        if cfg.cluster.redis:
            self.cluster = Cluster(cfg.cluster)
            await self.cluster.start()
            if self.index == 0:
                self.suppression_sync = SuppressionSync(cfg.cluster, self.suppression)
                self.suppression_sync.start()
            say(
                f"cluster node {cfg.cluster.node_id}: limits shared through {_redacted(cfg.cluster.redis)}"
                f" ({self.cluster.nodes} node(s) seen, Redis {'up' if self.cluster.up else 'DOWN'})"
            )
        resolver = Resolver(cfg.dns)
        remote = SmtpDeliverer(cfg, spool, resolver, self.dkim, self._tls_policy(resolver))
        self.delivery = await start_delivery(
            cfg,
            spool,
            remote,
            LocalDeliverer(cfg, spool),
            self.dlog,
            suppression=self.suppression,
            feedback=feedback,
            shared=self.cluster,
        )
        if self.cluster is not None:
            self.cluster.on_state = self.delivery.scheduler.apply_shared
        spool.on_commit(self._committed)
        hub = self.hub = Hub(cfg, SpoolStore(spool), new_id, spool.unhealthy_reason)
        self.ssl_context = ssl_context
        policy = _policy(cfg)
        try:
            for lcfg in cfg.listeners:
                self._settings[lcfg.label] = ListenerSettings(cfg, lcfg, hub, policy, users, ssl_context)
                server = await listen(
                    hub, lcfg, lambda label=lcfg.label: self._settings[label], self.reuse_port
                )
                self._servers.append(server)
                say(f"listening on {lcfg.label} ({_where(server)}, mode {lcfg.mode}, tls {lcfg.tls})")
            if cfg.http.address is not None:
                with address_in_use("http.address", cfg.http.address):
                    await self._start_api(cfg, spool)
            with address_in_use("metrics", cfg.metrics.address):
                exporter = serve_metrics(cfg.metrics.address, self._healthy)
        except BaseException:
            await self._shutdown(0.0)
            raise
        hub.start()
        say(f"spool at {os.path.abspath(cfg.spool.path)} ({spool.recovery.messages} queued message(s))")
        say(f"parser backend {parser.backend}; event loop {type(loop).__module__}")
        if cfg.metrics.address is not None:
            say(f"metrics on http://{_fmt(exporter.address)}/metrics")
        if cfg.delivery.hold:
            say("delivery on hold: accepting and queueing only")
        self.ready = True
        if self._reload_pending:
            self.reload()
        await self._stop.wait()
        say("shutting down: refusing new connections, finishing transactions")
        await self._shutdown(cfg.server.shutdown_grace)
        exporter.close()
        say("stopped")
        return 0

    def _tls_policy(self, resolver: Resolver) -> TlsPolicy:
        """Outbound TLS policy with its MTA-STS cache and TLS-RPT counters kept beside the spool."""
        cfg = self.cfg
        where = state_dir(cfg.spool.path)
        cache = PolicyCache(StateFile(os.path.join(where, "mta-sts.json")))
        tls = TlsPolicy(cfg, resolver, cache)
        if cfg.delivery.tls_rpt:
            self.tls_reports = TlsReports(
                resolver, cfg.hostname, cfg.delivery.bounce_from, queue_into(self.spool.put, new_id), tls,
                StateFile(os.path.join(where, "tls-rpt.json")),
            )  # fmt: skip
            tls.reports = self.tls_reports
            self.tls_reports.start()
        return tls

    async def _start_api(self, cfg: Config, spool: Spool) -> None:
        ctx = self.api_ctx = api.Context(
            cfg,
            spool,
            self.node_spool,
            api.load_tokens(cfg),
            self._healthy,
            self.delivery.feeder.wake,
            self.suppression,
        )
        self._api, bound = await api.start(ctx, reuse_port=self.workers > 1)
        say(f"HTTP API on http://{_fmt(bound)}/api/v1/ ({len(ctx.tokens)} token(s))")

    def _healthy(self) -> bool:
        return self.ready and not self.stopping

    def _committed(self, envelopes: list[Envelope]) -> None:
        """After each group commit: one delivery-log write for the batch, then the scheduler."""
        self.dlog.received(envelopes)
        self.delivery.submit(envelopes)

    def stop(self) -> None:
        self.stopping = True
        self._stop.set()

    def load_config(self) -> Config:
        """The configuration a SIGHUP applies (a worker narrows it to its share)."""
        return config_mod.load(self.config_path)

    def reload(self) -> None:
        """SIGHUP: new policy, limits, users and certificates for new sessions, new delivery
        settings for the next delivery, new webhooks for the next POST; nobody is dropped."""
        if not self.ready:
            self._reload_pending = True
            return
        self._reload_pending = False
        try:
            cfg = self.load_config()
            _check_sending(cfg)
            users = Users.load(cfg.policy.users_file)
            if self.ssl_context is not None:
                tls.reload(self.ssl_context, cfg)
            if self.dkim is not None:
                self.dkim.reload(cfg.dkim)
            elif cfg.dkim:
                say("[[dkim]] entries are new: signing starts after a restart")
        except (ConfigError, AuthConfigError) as e:
            for line in str(e).splitlines():
                say(f"reload refused, keeping the running configuration: {line}")
            return
        policy = _policy(cfg)
        hub = self.hub
        assert hub is not None
        for lcfg in cfg.listeners:
            if lcfg.label in self._settings:
                self._settings[lcfg.label] = ListenerSettings(cfg, lcfg, hub, policy, users, self.ssl_context)
            else:
                say(f"listener {lcfg.label} is new: it needs a restart")
        hub.configure(cfg)
        self.delivery.reload(cfg)
        if self.webhooks is not None:
            self.webhooks.reload(cfg.webhooks)
        elif cfg.webhooks:
            self.webhooks = WebhookService(cfg.webhooks, self.spool, self.dlog)
            self.webhooks.start()
        if self.api_ctx is not None:
            try:
                self.api_ctx.tokens = api.load_tokens(cfg)
            except ValueError as e:
                say(f"HTTP API tokens not reloaded: {e}")
            self.api_ctx.cfg = cfg
        self.cfg = cfg
        say("configuration reloaded")

    async def _shutdown(self, grace: float) -> None:
        hub = self.hub
        if hub is not None:
            hub.drain()
            if not await hub.wait_idle(grace):
                say(f"{len(hub.connections)} connection(s) still open after the grace period: closing them")
                hub.abort_all()
        if self._api is not None:
            await self._api.cleanup()
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        if hub is not None:
            await hub.close()
        if self.tls_reports is not None:
            await self.tls_reports.close()
        if self.delivery is not None:
            await self.delivery.stop()
        if self.webhooks is not None:
            await self.webhooks.close()
        if self.cluster is not None:
            await self.cluster.close()
        if self.suppression_sync is not None:
            await self.suppression_sync.close()
        if self.dkim is not None:
            await self.dkim.close()
        self.suppression.close()
        self.spool.close()
        self.dlog.close()


def _check_sending(cfg: Config) -> None:
    """Every pool source can be bound and the complaint-token key read: else start-up errors naming them."""
    errors = sources.unbindable(cfg)
    try:
        ref.load_key(cfg)
    except OSError as e:
        errors.append(f"suppression.fbl_key_file: cannot read {ref.key_path(cfg)}: {e.strerror or e}")
    if errors:
        raise ConfigError(errors)


def _policy(cfg: Config) -> Policy:
    """The relay policy, with delivery.local's RCPT-time mailbox check for local_domains."""
    return Policy(cfg, lambda addr: local_recipient_exists(cfg, addr))


def _redacted(url: str) -> str:
    """A Redis URL fit for a log line: no password."""
    scheme, sep, rest = url.partition("://")
    return scheme + sep + rest.rpartition("@")[2]


def _where(server: asyncio.Server) -> str:
    return ", ".join(_fmt(s.getsockname()) for s in server.sockets)


def _fmt(addr: Any) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
