# SPDX-License-Identifier: MIT
"""Metric values of a worker process: in memory on the hot path, copied to the node's files on demand.

prometheus-client's multiprocess mode writes an mmap'd file on every update
(a lock, ``getpid()``, a pack: about three times the in-memory cost, some 10 % of
a worker's CPU per accepted message). A worker instead keeps plain in-memory
values, exactly as a single process does, and writes the ones that changed into
the very same files (same names, same keys, so the supervisor's
``MultiProcessCollector`` reads them unchanged) about once a second and whenever
the supervisor is about to answer a scrape. A worker killed by SIGKILL loses at
most its last second of counts from the node's totals.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from prometheus_client import values
from prometheus_client.mmap_dict import MmapedDict, mmap_key

_all: list[BufferedValue] = []
_files: dict[str, MmapedDict] = {}
_directory = ""


class BufferedValue(values.MutexValue):
    """A MutexValue that remembers where prometheus-client's multiprocess mode would store it."""

    _multiprocess = True

    def __init__(self, typ: str, metric_name: str, name: str, labelnames: Any, labelvalues: Any,
                 help_text: str, multiprocess_mode: str = "", **kwargs: Any) -> None:  # fmt: skip
        super().__init__(typ, metric_name, name, labelnames, labelvalues, help_text, **kwargs)  # type: ignore[no-untyped-call]
        self.file = f"{typ}_{multiprocess_mode}" if typ == "gauge" else typ
        self.key = mmap_key(metric_name, name, labelnames, labelvalues, help_text)
        self.flushed: float | None = None  # never written: the first flush creates the series (at 0)
        _all.append(self)


def install(directory: str) -> None:
    """Every metric value created from now on is buffered for ``directory``.

    Must run before ``fastmta.metrics`` is imported: the metric objects pick
    their value class when they are created.
    """
    global _directory
    if "fastmta.metrics" in sys.modules:
        raise RuntimeError("worker_metrics.install() after fastmta.metrics was imported")
    _directory = directory
    values.ValueClass = BufferedValue


def flush() -> None:
    """Write every value that changed since the last flush (cheap when nothing did)."""
    if not _directory:
        return
    pid = os.getpid()
    for v in list(_all):
        current = v._value  # a float read is atomic; a concurrent inc lands in the next flush
        if current != v.flushed:
            f = _files.get(v.file)
            if f is None:
                f = _files[v.file] = MmapedDict(os.path.join(_directory, f"{v.file}_{pid}.db"))  # type: ignore[no-untyped-call]
            f.write_value(v.key, current, 0.0)  # type: ignore[no-untyped-call]
            v.flushed = current
