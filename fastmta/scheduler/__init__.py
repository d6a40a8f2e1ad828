# SPDX-License-Identifier: MIT
"""Delivery side entry point: the composition root calls ``start_delivery``.

``DeliveryService`` is all ``node/server.py`` sees: ``submit`` committed envelopes
(from ``spool.on_commit``), ``reload`` on SIGHUP (the scheduler's limits and
``[delivery] hold``, and every deliverer's own settings), ``suspend``/``resume`` a
destination on every node of a cluster, ``stop`` at shutdown. The scheduler proper
lives in core.py, shards in shard.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

from fastmta.config import Config
from fastmta.delivery import Deliverer
from fastmta.deliverylog import DeliveryLog
from fastmta.scheduler.core import Scheduler
from fastmta.scheduler.feeder import Feeder
from fastmta.scheduler.ports import QueueSpool, SharedLimits
from fastmta.spool.records import Envelope
from fastmta.spool.suppression import SuppressionList


class DeliveryService:
    """The running scheduler, its feeder task and the deliverers it closes at stop."""

    def __init__(self, scheduler: Scheduler, feeder: Feeder, deliverers: list[Deliverer]) -> None:
        self.scheduler = scheduler
        self.feeder = feeder
        self._deliverers = deliverers
        self._task = asyncio.get_running_loop().create_task(feeder.run())

    def submit(self, envelopes: Iterable[Envelope]) -> None:
        """Hand freshly committed messages to the scheduler (fast path, no spool scan)."""
        self.scheduler.submit(envelopes)

    def suspend(self, domain: str, seconds: float, reason: str = "") -> None:
        """Hold delivery to ``domain`` for ``seconds`` (cluster-wide with ``[cluster] redis``)."""
        self.scheduler.suspend(domain, seconds, reason)

    def resume(self, domain: str) -> None:
        """End ``domain``'s suspension now (cluster-wide with ``[cluster] redis``)."""
        self.scheduler.resume(domain)

    def reload(self, cfg: Config) -> None:
        """Apply a reloaded configuration (SIGHUP) to the scheduler and to every deliverer
        (ports, TLS, timeouts, DNS, local delivery); lifting hold makes the feeder scan now."""
        for d in self._deliverers:
            d.reload(cfg)
        self.scheduler.reload(cfg)
        self.feeder.wake()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop delivering; in-flight work gets ``grace`` seconds, the rest waits for the next start."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.scheduler.stop(grace)
        for d in self._deliverers:
            with contextlib.suppress(Exception):
                await d.close()


async def start_delivery(
    cfg: Config,
    spool: QueueSpool,
    remote: Deliverer,
    local: Deliverer | None = None,
    dlog: DeliveryLog | None = None,
    interval: float = 1.0,
    suppression: SuppressionList | None = None,
    feedback: Deliverer | None = None,
    shared: SharedLimits | None = None,
) -> DeliveryService:
    """Build the scheduler and its feeder around ready deliverers, and start feeding.

    ``remote`` takes every destination but the local domains, ``local`` those (None:
    ``remote`` takes them too), ``feedback`` the ARF reports sent to ``[suppression]
    fbl_addresses``. The service closes every deliverer when it stops. ``shared``: the
    cluster's limits (its heartbeat news goes to ``Scheduler.apply_shared``).
    """
    sched = Scheduler(
        cfg, spool, remote, local, dlog, suppression=suppression, feedback=feedback, shared=shared
    )
    feeder = Feeder(sched, interval, spool.count)
    deliverers = [d for d in (remote, local, feedback) if d is not None]
    return DeliveryService(sched, feeder, deliverers)
