# SPDX-License-Identifier: MIT
"""Fault scenarios: standalone, bounded clients that misbehave on purpose (``make faults``)."""
