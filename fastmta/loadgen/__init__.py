# SPDX-License-Identifier: MIT
"""SMTP load generator: many connections on one uvloop, a few Python calls per reply.

Each connection is an ``asyncio.Protocol`` driven by the replies it reads (no
StreamReader, no coroutine per command), so the generator stays cheaper than the
server it measures; ``procs`` forks more loops when one core is not enough. Every
run is bounded by a message count and/or a duration. Works against any SMTP
server; it never stores what it sends.
"""

from fastmta.loadgen.client import run_async
from fastmta.loadgen.runner import Progress, run
from fastmta.loadgen.spec import (
    DEFAULT_RECIPIENT,
    DEFAULT_SENDER,
    LoadSpec,
    load_corpus,
    make_message,
    payloads,
)
from fastmta.loadgen.stats import Stats, format_report, histogram, latency_summary, percentile

__all__ = [
    "DEFAULT_RECIPIENT",
    "DEFAULT_SENDER",
    "LoadSpec",
    "Progress",
    "Stats",
    "format_report",
    "histogram",
    "latency_summary",
    "load_corpus",
    "make_message",
    "payloads",
    "percentile",
    "run",
    "run_async",
]
