# SPDX-License-Identifier: MIT
"""The inbound ESMTP server: reply catalogue, argument parsing, session state machine,
asyncio protocol glue, listeners, TLS and AUTH."""
