# SPDX-License-Identifier: MIT
"""The HTTP API: message injection and queue administration over JSON (``[http]``)."""
