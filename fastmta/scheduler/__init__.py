# SPDX-License-Identifier: MIT
"""Delivery side entry point: the composition root calls ``start_delivery``.

``DeliveryService`` is all ``server.py`` sees: ``submit`` committed envelopes
(from ``spool.on_commit``), ``reload`` on SIGHUP (lifts ``[delivery] hold``),
``suspend``/``resume`` a destination (the admin API), ``stop`` at shutdown. The
scheduler proper lives in core.py, shards in shard.py.
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
        """Apply a reloaded configuration (SIGHUP); lifting hold makes the feeder scan now."""
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
    shared: SharedLimits | None = None,
) -> DeliveryService:
    """Build the scheduler and its feeder around ready deliverers, and start feeding.

    ``remote`` takes every destination but the local domains, ``local`` those (None:
    ``remote`` takes them too). The service closes both when it stops. ``shared``: the
    cluster's limits (its heartbeat news goes to ``Scheduler.apply_shared``).
    """
    sched = Scheduler(cfg, spool, remote, local, dlog, shared=shared)
    feeder = Feeder(sched, interval, spool.count)
    return DeliveryService(sched, feeder, [remote] if local is None else [remote, local])
