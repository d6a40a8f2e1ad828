# SPDX-License-Identifier: MIT
"""The two protocol cores answer alike: random dialogues, cut at random points, fed to
the compiled core with the compiled parser and to the pure-Python core with the pure
parser; every write (the replies of one read), every committed body and where the
dialogue closed must be identical. No sockets: the cores are sans-I/O.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastmta.errors import SpoolFullError
from fastmta.smtp import session as S
from tests.fixtures.parser import TWINS, load_twin, split_at
from tests.fixtures.session import FakeSettings

CORES = ("fastmta.smtp._core", "fastmta.smtp._core_py")


def load_core(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:  # the extension must be built: pip install -e .
        pytest.fail(f"{name} is not importable ({exc}); build it with `pip install -e .`")


def converse(core_mod: ModuleType, parser_mod: ModuleType, chunks: list[bytes]) -> list[Any]:
    """Feed ``chunks`` as reads, acting on what the core hands back as protocol.py does
    (every third commit fails for space); the transcript of writes, commits and the close."""
    record: list[Any] = []
    cfg = FakeSettings(max_size=300, max_line=80, max_recipients=3, max_errors=12)
    session = S.Session(cfg, "127.0.0.1")
    # The parser passes longer lines than the session takes, as where AUTH is offered.
    parser = parser_mod.CommandParser(200, 300, "reject")
    core = core_mod.Core(session, parser, record.append)
    commits = 0
    for chunk in chunks:
        if core.waiting:
            raise AssertionError("a wait left unresolved")
        act = core.feed(chunk)
        record.append(("line_started", core.line_started))
        while act is not None and act[0] == S.A_COMMIT:
            commits += 1
            record.append(("commit", act[1], act[2].sender, list(act[2].rcpts), act[4]))
            if commits % 3 == 0:
                session.commit_failed(SpoolFullError())
            else:
                session.commit_done(act[1])
            act = core.resume()
        if act is not None:
            record.append(("action", act[0]))
            return record
    return record


def _bdat(size: int, last: bool, fill: bytes) -> bytes:
    return b"BDAT %d%s\r\n" % (size, b" LAST" if last else b"") + (fill * size)[:size]


COMMANDS = st.sampled_from(
    [b"EHLO c.test\r\n", b"HELO c.test\r\n", b"EHLO\r\n", b"MAIL FROM:<a@c.test>\r\n",
     b"MAIL FROM:<a@c.test> SIZE=100 BODY=8BITMIME\r\n", b"MAIL FROM:<>\r\n", b"MAIL FROM:bad\r\n",
     b"RCPT TO:<b@in.test>\r\n", b"RCPT TO:<c@in.test> NOTIFY=NEVER\r\n", b"RCPT TO:<d@out.test>\r\n",
     b"RCPT TO:<postmaster>\r\n", b"DATA\r\n", b"DATA x\r\n", b"RSET\r\n", b"NOOP\r\n", b"VRFY x\r\n",
     b"EXPN x\r\n", b"HELP\r\n", b"STARTTLS\r\n", b"AUTH PLAIN\r\n", b"FOO\r\n", b"mail from:<a@c.test>\r\n",
     b"BDAT x\r\n", b"X" * 100 + b"\r\n", b"\r\n", b"QUIT\r\n", b"Quit\r\n", b"NOOPX\r\n", b"NOO\r\n",
     b"NOOP\tx\r\n", b"NOOP " + b"x" * 74 + b"\r\n", b"NOOP " + b"x" * 73 + b"\r\n",
     b"RCPT TO:<" + b"a" * 70 + b"@in.test>\r\n", b"rcpt to:<e@in.test>\r\n", b"\xe9HLO x\r\n"]
)  # fmt: skip
BODY_PIECES = st.sampled_from(
    [b"Subject: x\r\n\r\n", b"line\r\n", b"..dot\r\n", b".\r\n", b"\r\n.\r\n", b"bare\nLF\r\n",
     b"bare\rCR\r\n", b"Received: from x\r\n", b"X-Fastmta-Pool: p\r\n", b"x" * 120 + b"\r\n"]
)  # fmt: skip
BDAT = st.builds(_bdat, st.integers(0, 40), st.booleans(), st.sampled_from([b"ab\r\n", b".\r\n", b"\n"]))
DATA_BODY = st.lists(BODY_PIECES, max_size=6).map(lambda ps: b"".join(ps) + b".\r\n")
STEP = st.one_of(COMMANDS, COMMANDS, COMMANDS, BDAT, DATA_BODY)
# A valid transaction up front, so most dialogues reach DATA and BDAT bodies.
OPENING = b"EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<b@in.test>\r\n"


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(STEP, max_size=25),
    opening=st.booleans(),
    points=st.lists(st.integers(0, 4000), max_size=12),
    one_by_one=st.booleans(),
)
def test_the_cores_answer_byte_for_byte_alike(
    steps: list[bytes], opening: bool, points: list[int], one_by_one: bool
) -> None:
    stream = (OPENING if opening else b"") + b"".join(steps)
    chunks = [bytes([c]) for c in stream] if one_by_one else split_at(stream, points)
    compiled = converse(load_core(CORES[0]), load_twin(TWINS[0]), chunks)
    pure = converse(load_core(CORES[1]), load_twin(TWINS[1]), chunks)
    assert compiled == pure


def test_a_pipelined_dialogue_is_one_write_per_read() -> None:
    """The whole dialogue in one read: one write before the commit, one after it."""
    for name in CORES:
        record = converse(
            load_core(name),
            load_twin(TWINS[1]),
            [OPENING + b"DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\nNOOP\r\nQUIT\r\n"],
        )
        writes = [r for r in record if isinstance(r, bytes)]
        assert len(writes) == 2, (name, writes)  # EHLO … 354, then 250 queued, NOOP's 250, 221
        assert writes[0].endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        assert writes[1].startswith(b"250 2.0.0 Ok: queued as ID1\r\n250 2.0.0 Ok\r\n221 ")
        assert record[-1] == ("action", S.A_CLOSE)


@pytest.mark.parametrize(("env", "backend"), [({"FASTMTA_PURE_PYTHON": "1"}, "python"), ({}, "cython")])
def test_the_core_follows_the_parser_switch(env: dict[str, str], backend: str) -> None:
    """One switch for both compiled parts: a pure run never mixes in the compiled core."""
    code = "import fastmta.parser as p, fastmta.smtp.core as c; print(p.backend, c.backend)"
    clean = {k: v for k, v in os.environ.items() if k != "FASTMTA_PURE_PYTHON"}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, check=True)
    assert out.stdout.split() == [backend.encode(), backend.encode()]
