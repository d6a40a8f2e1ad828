# SPDX-License-Identifier: MIT
"""The reply catalogue: names match codes, enhanced codes match their class, text is generic."""

from __future__ import annotations

import re

import pytest

from fastmta.smtp import replies as R


@pytest.mark.parametrize("name", sorted(R.CATALOGUE))
def test_entry_is_consistent(name: str) -> None:
    entry = R.CATALOGUE[name]
    assert name.startswith(f"R_{entry.code}_"), name
    wire = getattr(R, name)
    assert wire.endswith(b"\r\n") and wire.count(b"\r\n") == 1
    assert wire.startswith(str(entry.code).encode())
    if entry.code == 354:
        return  # RFC 3463: intermediate replies carry no enhanced code
    assert re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", entry.enhanced), name
    assert entry.enhanced[0] == str(entry.code)[0], name
    assert wire == f"{entry.code} {entry.enhanced} {entry.text}\r\n".encode()
    assert not re.search(r"/|\{|\}|Traceback|Error:", entry.text), name  # generic text only


def test_error_reply_codes() -> None:
    """Each refusal a client can meet (bad input, limits, relay, storage), with its exact codes."""
    expected = {
        "R_500_LINE_TOO_LONG": "500 5.5.2", "R_501_SYNTAX": "501 5.5.4", "R_503_BAD_SEQUENCE": "503 5.5.1",
        "R_500_UNKNOWN": "500 5.5.1", "R_554_RELAY_DENIED": "554 5.7.1", "R_421_TOO_MANY_ERRORS": "421 4.7.0",
        "R_421_TIMEOUT": "421 4.4.2", "R_421_IP_LIMIT": "421 4.7.0", "R_452_STORAGE": "452 4.3.1",
        "R_552_TOO_BIG": "552 5.3.4", "R_452_TOO_MANY_RCPTS": "452 4.5.3", "R_550_SMUGGLING": "550 5.6.0",
        "R_530_AUTH_REQUIRED": "530 5.7.0", "R_535_AUTH_FAILED": "535 5.7.8",
    }  # fmt: skip
    for name, prefix in expected.items():
        assert getattr(R, name).startswith(prefix.encode() + b" "), name


def test_variable_replies() -> None:
    assert R.banner("mx.test") == b"220 mx.test ESMTP fastmta\r\n"
    assert R.queued("AbC123") == b"250 2.0.0 Ok: queued as AbC123\r\n"
    assert R.chunk_ok(10) == b"250 2.0.0 10 octets received\r\n"
    assert R.ehlo("mx.test", ["PIPELINING", "DSN"]) == b"250-mx.test\r\n250-PIPELINING\r\n250 DSN\r\n"
    assert R.ehlo("mx.test", []) == b"250 mx.test\r\n"
