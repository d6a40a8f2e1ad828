# SPDX-License-Identifier: MIT
"""Runs every ``*.dialog`` script here against one real server (chasquid .cmy / OpenSMTPD smtpscript style).

Script lines:
  ``C: text``   send ``text`` + CRLF
  ``C~ text``   send ``text`` with ``\\r \\n \\t \\x00``-style escapes and NO added CRLF
  ``S: glob``   read one complete reply; it must match the glob (``*`` spans lines of a multi-line reply)
  ``CLOSED``    the server must close the connection now
  ``# …``       comment; blank lines are ignored
The banner is read (and checked to be a 220) before the first line.
"""

from __future__ import annotations

import codecs
import fnmatch
from pathlib import Path

import pytest

from tests.fixtures.server import RawClient, Running

pytestmark = pytest.mark.timeout(30)
DIALOGS = sorted(Path(__file__).parent.glob("*.dialog"))


@pytest.mark.parametrize("path", DIALOGS, ids=[p.stem for p in DIALOGS])
def test_dialog(fastmta_module_server: Running, path: Path) -> None:
    srv = fastmta_module_server
    with RawClient(srv.host, srv.port) as c:
        assert c.banner.startswith(b"220 ")
        for no, raw in enumerate(path.read_text().splitlines(), 1):
            line = raw.rstrip("\n")
            where = f"{path.name}:{no}"
            if not line.strip() or line.startswith("#"):
                continue
            if line.startswith("C:"):  # "C:" alone sends an empty line
                c.send(line[3:].encode() + b"\r\n")
            elif line.startswith("C~ "):
                c.send(codecs.escape_decode(line[3:].encode())[0])
            elif line.startswith("S: "):
                reply = c.reply().decode("utf-8", "replace").rstrip("\r\n").replace("\r\n", "\n")
                assert fnmatch.fnmatchcase(reply, line[3:]), f"{where}: expected {line[3:]!r}, got {reply!r}"
            elif line.strip() == "CLOSED":
                assert c.closed(), f"{where}: connection still open"
            else:
                raise AssertionError(f"{where}: cannot parse {line!r}")


def test_there_are_dialogs() -> None:
    assert len(DIALOGS) >= 8
