# SPDX-License-Identifier: MIT
"""One worker process under the supervisor (``[server] workers = N > 1``).

A worker is an ordinary ``Server`` with a narrower view of the configuration
(:func:`worker_config`): its own spool shard, no metrics exporter (the
supervisor exports every worker's series), and its share of the node-wide
connection limits. It tells the supervisor when it is ready by writing one byte
on its lifeline socket, and stops gracefully when that socket reaches EOF (the
supervisor is gone), so workers never outlive their supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket

from fastmta.config import Config, MetricsConfig
from fastmta.node import worker_metrics
from fastmta.node.server import Server
from fastmta.node.supervisor import FLUSH, FLUSHED, READY
from fastmta.spool.shards import shard_config

_FLUSH_EVERY = 1.0  # seconds between metric flushes to the node's files


def share(total: int, workers: int) -> int:
    """A worker's part of a node-wide limit: ceil(total / workers), at least 1."""
    return max(1, -(-total // workers))


def worker_config(cfg: Config, index: int, workers: int) -> Config:
    """What worker ``index`` of ``workers`` runs with (docs/operations.md, "Worker processes").

    Connection ceilings (inbound total, inbound per client IP, outbound per
    destination and in ``limit`` shaping rules) become ceil(limit / N) per worker
    and message rates rate / N, so the node as a whole keeps to what the
    configuration says. The kernel spreads connections over the workers by a
    hash of the address pair, so a per-IP ceiling can refuse a client a little
    before it holds the full number of connections node-wide. With ``[cluster] redis``
    the outbound limits stay whole: Redis shares them among every worker of every
    node, each worker a cluster member named ``<node_id>/<index>``.
    """
    limits = dataclasses.replace(
        cfg.limits,
        max_connections=share(cfg.limits.max_connections, workers),
        max_connections_per_ip=share(cfg.limits.max_connections_per_ip, workers),
    )
    d = cfg.delivery
    shaping = tuple(
        dataclasses.replace(
            r, max_connections=share(r.max_connections, workers), message_rate=r.message_rate / workers
        )
        for r in d.shaping
    )
    delivery = dataclasses.replace(
        d,
        max_connections_per_destination=share(d.max_connections_per_destination, workers),
        message_rate_per_destination=d.message_rate_per_destination / workers,
        shaping=shaping,
    )
    cluster = cfg.cluster
    if cluster.redis:
        delivery = d
        cluster = dataclasses.replace(cluster, node_id=f"{cluster.node_id}/{index}")
    return dataclasses.replace(
        cfg,
        spool=shard_config(cfg.spool, index, workers),
        metrics=MetricsConfig(address=None),
        limits=limits,
        delivery=delivery,
        cluster=cluster,
    )


class WorkerServer(Server):
    """A Server that reports readiness on its lifeline and stops when the supervisor goes away."""

    reuse_port = True  # its siblings bind the same addresses; the supervisor checked them first

    def __init__(self, cfg: Config, config_path: str | None, index: int, workers: int, lifeline: int) -> None:
        super().__init__(worker_config(cfg, index, workers), config_path)
        self.node_spool = cfg.spool
        self.index = index
        self.workers = workers
        self._lifeline = socket.socket(fileno=lifeline)

    def load_config(self) -> Config:
        """SIGHUP re-reads the file; the worker's share is applied again."""
        return worker_config(super().load_config(), self.index, self.workers)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._lifeline.setblocking(False)
        loop.add_reader(self._lifeline.fileno(), self._supervisor_says)
        announce = loop.create_task(self._announce_ready())
        flusher = loop.create_task(self._flush_metrics())
        try:
            return await super().run()
        finally:
            announce.cancel()
            flusher.cancel()
            worker_metrics.flush()  # the final counts of a clean stop
            loop.remove_reader(self._lifeline.fileno())
            self._lifeline.close()

    @staticmethod
    async def _flush_metrics() -> None:
        while True:
            worker_metrics.flush()
            await asyncio.sleep(_FLUSH_EVERY)

    async def _announce_ready(self) -> None:
        while not self.ready:
            await asyncio.sleep(0.02)
        with contextlib.suppress(OSError):
            self._lifeline.send(READY)

    def _supervisor_says(self) -> None:
        try:
            data = self._lifeline.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if FLUSH in data:  # a scrape is coming: write the metric values out now
            worker_metrics.flush()
            with contextlib.suppress(OSError):
                self._lifeline.send(FLUSHED)
        if not data:  # EOF: the supervisor died (even by SIGKILL): finish what is open, stop
            asyncio.get_running_loop().remove_reader(self._lifeline.fileno())
            self.stop()
