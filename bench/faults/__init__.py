# SPDX-License-Identifier: MIT
"""Fault scenarios: bounded, standalone scripts that break something on purpose and print JSON."""
