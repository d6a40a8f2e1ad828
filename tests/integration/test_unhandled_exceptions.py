# SPDX-License-Identifier: MIT
"""An exception an event loop could not hand to anyone fails the test that caused it:
in a ``fastmta serve`` subprocess (its stderr) and in the test process (any loop)."""

from __future__ import annotations

import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.fixtures.server import serve_fastmta
from tests.support import PYTHON, ROOT

# Loaded by every Python process started with this directory on PYTHONPATH: the server
# gets a callback that raises half a second after it starts serving.
_FAULT = """
import asyncio
import fastmta.node.server as server

_run = server.Server.run

async def run(self):
    asyncio.get_running_loop().call_later(0.5, lambda: 1 / 0)
    return await _run(self)

server.Server.run = run
"""


def test_a_server_with_an_unhandled_loop_exception_fails_at_stop(tmp_path: Path) -> None:
    fault = tmp_path / "fault"
    fault.mkdir()
    (fault / "sitecustomize.py").write_text(_FAULT)
    srv = serve_fastmta(tmp_path / "srv", env={"PYTHONPATH": str(fault)})
    with pytest.raises(AssertionError, match="left exceptions unhandled") as failed:
        srv.proc.stop()
    assert "ZeroDivisionError" in str(failed.value)


def test_a_clean_server_stops_quietly(tmp_path: Path) -> None:
    srv = serve_fastmta(tmp_path)
    assert srv.proc.stop() == 0 and srv.proc.loop_exceptions() == []


_IN_PROCESS = """
import asyncio
import threading

import uvloop


async def _boom() -> None:
    raise RuntimeError("nobody awaits this")


async def _orphan() -> None:
    asyncio.get_running_loop().create_task(_boom())
    await asyncio.sleep(0.01)


def test_task_never_retrieved_asyncio() -> None:
    asyncio.run(_orphan())


def test_task_never_retrieved_uvloop() -> None:
    uvloop.run(_orphan())


def test_callback_raises_in_a_thread_loop() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    loop.call_soon_threadsafe(lambda: 1 / 0)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_clean() -> None:
    asyncio.run(asyncio.sleep(0))
"""


def test_in_process_loops_with_unhandled_exceptions_fail_their_test(tmp_path: Path) -> None:
    case = tmp_path / "test_loops.py"
    case.write_text(textwrap.dedent(_IN_PROCESS))
    cmd = [PYTHON, "-m", "pytest", "-q", "-rA", "-p", "tests.conftest", "-p", "no:cacheprovider", str(case)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120).stdout
    # Each test itself passes; the three with a loop exception then error in teardown.
    errors = set(re.findall(r"^ERROR \S+::(\w+)", out, re.M))
    assert errors == {
        "test_task_never_retrieved_asyncio",
        "test_task_never_retrieved_uvloop",
        "test_callback_raises_in_a_thread_loop",
    }, out
    assert re.search(r"^4 passed, 3 errors in ", out, re.M), out
    # once per error in the report body; the -rA summary may repeat it, cut to the terminal's width
    details = out.partition("short test summary info")[0]
    assert details.count("an event loop left exceptions unhandled") == 3, out
