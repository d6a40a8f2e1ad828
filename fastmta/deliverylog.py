# SPDX-License-Identifier: MIT
"""The JSON delivery log (fields in docs/operations.md): one object per line, per event and recipient.

Lines go to stdout (or ``[log] file``). Callers hand over whole batches so one
commit or one delivery attempt costs one ``write``; nothing here is formatted
unless it is written. Never logs secrets (no AUTH data, no message content).
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
# The string encoder ``_encode`` uses (ensure_ascii=False): the per-commit "received"
# lines are formatted from a fixed template with it, byte-identical to ``_encode``.
_jstr = json.encoder.encode_basestring


@functools.lru_cache(maxsize=1)
def _whole_second(sec: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))


def iso_ts(t: float | None = None) -> str:
    """ISO 8601 UTC with milliseconds: ``2026-11-28T20:21:35.123Z``.

    Every commit's "received" lines start with one: the seconds part is formatted once
    per second (``strftime`` cost 3 % of the loop's busy time at 100 KiB messages)."""
    t = time.time() if t is None else t
    ms = int(t * 1000)
    return f"{_whole_second(ms // 1000)}.{ms % 1000:03d}Z"


Tap = Callable[[list[dict[str, Any]], list[str]], None]


class DeliveryLog:
    """Writes delivery-log records; ``enabled=False`` makes every call free.

    ``tap(records, lines)``, when set, sees every batch ``write`` gets with its encoded
    lines (the webhooks' journal), whether or not the log itself is written.
    """

    def __init__(self, path: str = "", enabled: bool = True, node: str = "") -> None:
        self.enabled = enabled
        self.tap: Tap | None = None
        # every line ends with the node that wrote it (``[cluster] node_id``), when there is one
        self._end = f',"node":{_jstr(node)}}}' if node else "}"
        self._own = bool(path)
        self._out: TextIO = open(path, "a", encoding="utf-8", buffering=1) if path else sys.stdout  # noqa: SIM115

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        """Write records (dicts of log fields; missing ones are omitted) in one call."""
        tap = self.tap
        if not self.enabled and tap is None:
            return
        recs = records if isinstance(records, list) else list(records)
        end = self._end
        lines = [_encode(r)[:-1] + end for r in recs]
        if tap is not None:
            tap(recs, lines)
        if self.enabled and lines:
            self._out.write("\n".join(lines) + "\n")
            self._out.flush()

    def received(self, envelopes: Iterable[Any]) -> None:
        """The "received" lines of one spool commit, one per recipient: the hot path,
        so a fixed template instead of a dict and the generic encoder per line."""
        if not self.enabled:
            return
        ts = _jstr(iso_ts())
        parts = []
        for e in envelopes:
            head = f'{{"ts":{ts},"event":"received","id":{_jstr(e.id)},"from":{_jstr(e.sender)},"rcpt":'
            tail = (f',"size":{e.size},"client_ip":{_jstr(e.client_ip)},'
                    f'"listener":{_jstr(e.listener)}{self._end}\n')  # fmt: skip
            parts += [head + _jstr(r.addr) + tail for r in e.rcpts]
        if parts:
            self._out.write("".join(parts))
            self._out.flush()

    def event(self, event: str, msg_id: str, sender: str, rcpts: Iterable[str], **fields: Any) -> None:
        """One line per recipient for one event of one message."""
        ts = iso_ts()
        self.write(
            {"ts": ts, "event": event, "id": msg_id, "from": sender, "rcpt": r, **fields} for r in rcpts
        )

    def close(self) -> None:
        if self._own:
            self._out.close()
