# SPDX-License-Identifier: MIT
"""Delivery side entry point (placeholder until the sharded scheduler lands)."""

from __future__ import annotations

from typing import Any

from fastmta.config import Config


class DeliveryService:
    """What the composition root talks to: submit committed envelopes, reload, stop."""

    def submit(self, envelopes: list[Any]) -> None:
        """Hand freshly committed messages to the scheduler (no-op placeholder)."""

    def reload(self, cfg: Config) -> None:
        """Apply a reloaded configuration (SIGHUP)."""

    async def stop(self) -> None:
        """Stop delivering; in-flight work finishes or is left for the next start."""


async def start_delivery(cfg: Config, spool: Any) -> DeliveryService:
    return DeliveryService()
