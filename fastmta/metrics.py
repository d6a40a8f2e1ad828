# SPDX-License-Identifier: MIT
"""Every metric fastmta exports, defined once (DESIGN.md §3.4).

Names and labels here are a public contract: the Grafana dashboard and the alert
rules in ``deploy/`` read them. No label takes an unbounded set of values (no
message ids, no addresses, no host names).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_DELIVERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

smtp_connections_total = Counter(
    "fastmta_smtp_connections_total", "Inbound SMTP connections accepted", ["listener"]
)
smtp_connections_active = Gauge(
    "fastmta_smtp_connections_active", "Inbound SMTP connections open now", ["listener"]
)
messages_received_total = Counter(
    "fastmta_messages_received_total", "Messages accepted and committed to the spool", ["listener"]
)
messages_rejected_total = Counter(
    "fastmta_messages_rejected_total", "Commands or messages refused", ["listener", "reason"]
)
received_bytes_total = Counter("fastmta_received_bytes_total", "Bytes of accepted messages")
deliveries_total = Counter(
    "fastmta_deliveries_total", "Per-recipient delivery attempts by result", ["result"]
)
queue_messages = Gauge("fastmta_queue_messages", "Messages in the queue by state", ["state"])
spool_commit_seconds = Histogram(
    "fastmta_spool_commit_seconds", "Time of one group commit (write + fsync)", buckets=_LATENCY_BUCKETS
)
spool_commit_batch_size = Histogram(
    "fastmta_spool_commit_batch_size", "Operations per group commit", buckets=_BATCH_BUCKETS
)
delivery_seconds = Histogram(
    "fastmta_delivery_seconds", "Time of one delivery transaction", buckets=_DELIVERY_BUCKETS
)
dns_lookups_total = Counter("fastmta_dns_lookups_total", "DNS lookups by result", ["result"])
destination_connections_active = Gauge(
    "fastmta_destination_connections_active", "Outbound connections open now"
)
