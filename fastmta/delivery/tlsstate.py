# SPDX-License-Identifier: MIT
"""Small durable state of the TLS policies: one JSON file each, replaced atomically.

MTA-STS policies and TLS-RPT counters must outlive a restart (RFC 8461 §5, RFC 8460
§4.1), but they change rarely and are small, and the spool's LMDB belongs to its
writer process and its group commit. So each is a JSON file beside the spool,
written to a temporary name, fsync'd and renamed (a crash leaves the old or the
new file, never half of one), at most once per ``delay`` seconds and off the
event loop. A file that cannot be read is logged and treated as empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable
from typing import Any

log = logging.getLogger("fastmta.delivery")

STATE_DIR = "tls-policy"  # under [spool] path


def state_dir(spool_path: str) -> str:
    """Where the TLS policy state of the spool at ``spool_path`` lives."""
    return os.path.join(spool_path, STATE_DIR)


class StateFile:
    """One JSON document on disk; ``save_soon`` coalesces writes, ``flush`` writes now."""

    def __init__(self, path: str, delay: float = 1.0) -> None:
        self.path = path
        self.delay = delay
        self._pending: Callable[[], Any] | None = None
        self._task: asyncio.Task[None] | None = None

    def load(self) -> dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("TLS policy state %s unreadable, starting empty: %s", self.path, e)
            return {}
        return data if isinstance(data, dict) else {}

    def save_soon(self, snapshot: Callable[[], Any]) -> None:
        """Write what ``snapshot()`` returns within ``delay`` seconds (the latest one wins)."""
        self._pending = snapshot
        if self._task is None or self._task.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a command, a unit test): write now
                self._write_pending()
                return
            self._task = loop.create_task(self._later())

    async def _later(self) -> None:
        await asyncio.sleep(self.delay)
        await self._write_async()

    async def flush(self) -> None:
        """Write what is pending now (shutdown)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._write_async()

    async def _write_async(self) -> None:
        # the snapshot is taken here, on the loop, so the thread never sees a dict change
        snapshot, self._pending = self._pending, None
        if snapshot is not None:
            await asyncio.to_thread(self.write, snapshot())

    def _write_pending(self) -> None:
        snapshot, self._pending = self._pending, None
        if snapshot is not None:
            self.write(snapshot())

    def write(self, data: Any) -> None:
        text = json.dumps(data, separators=(",", ":"))
        tmp = f"{self.path}.tmp"
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            log.error("cannot save TLS policy state %s: %s", self.path, e)
