# SPDX-License-Identifier: MIT
"""Several nodes, one set of limits: what ``[cluster]`` shares through Redis.

``limits.Cluster`` holds the per-destination connection leases, rate tokens,
suspensions and shaping limits of one node and falls back to node-local limits
(or pauses) while Redis is away. The spool stays on each node: nothing here ever
holds mail, so losing Redis can slow delivery down but never loses a message.
The scheduler sees this package only through its ``SharedLimits`` protocol.
"""
