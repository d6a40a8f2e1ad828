# SPDX-License-Identifier: MIT
"""Helpers shared by every test area: real tools, free loopback ports, a real server process.

Nothing here mocks anything: tools are the real Debian binaries, servers are real
processes on loopback. A missing tool fails the test; it never skips it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.peers import free_port as free_port  # one port picker for the tests and the benches
from fastmta.node.server import LOOP_EXCEPTION

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# Every test config points DNS here unless it starts its own dnsmasq: a dead
# loopback port, so no query can ever leave the machine.
DEAD_DNS = "127.0.0.1:9"
# How long a server or tool may take to start listening. A safety net, reached only when
# something is broken: a start takes about a second on an idle machine, but tens of seconds
# while the suite runs on several workers on a loaded 2-core one.
STARTUP_TIMEOUT = 60.0


def safe_sections(text: str, tmp: Path, spool: bool = True) -> str:
    """``text`` (a config) plus safe test values for each section it leaves out: the spool
    (unless ``spool`` is false) and the maildir in ``tmp``, DNS on the dead port, metrics off."""
    if spool and "[spool]" not in text:
        text += f'\n[spool]\npath = "{tmp / "spool"}"\nmap_size = "64MiB"\n'
    if "[dns]" not in text:
        text += f'\n[dns]\nnameservers = ["{DEAD_DNS}"]\ntimeout = "1s"\n'
    if "[metrics]" not in text:
        text += '\n[metrics]\naddress = ""\n'
    if "[local]" not in text:
        text += f'\n[local]\nmaildir = "{tmp / "mail"}"\n'
    return text


def require_tool(name: str) -> str:
    """Path of a real tool the test needs; a missing tool is a failure, never a skip."""
    path = shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/usr/bin", "/sbin") if os.access(p := f"{d}/{name}", os.X_OK)), None
    )
    if path is None:
        pytest.fail(f"required tool {name!r} is not installed (run scripts/install-tools.sh)")
    return path


@contextlib.contextmanager
def machine_lock(name: str) -> Iterator[None]:
    """Hold the machine-wide lock ``name`` (an flock on a file in the temp directory).

    For what a test binds that the machine has once, such as port 443 on a fixed
    loopback address: tests on parallel pytest-xdist workers, or in another checkout's
    run on the same machine, take turns instead of failing with EADDRINUSE. The file
    stays; removing it would let two holders lock two different files.
    """
    with open(Path(tempfile.gettempdir()) / f"fastmta-tests-{name}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def wait_port(
    host: str, port: int, timeout: float = STARTUP_TIMEOUT, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until something accepts on host:port (or fail, showing the process's stderr)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise AssertionError(f"process exited with {proc.returncode} before listening:\n{err}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listening on {host}:{port} after {timeout}s")


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> float:
    """Poll ``predicate`` until true and return the seconds it took.

    The way to wait for anything a server does asynchronously (a counter, a log line,
    a file): a sleep is either too short on a loaded machine or wastes time on an idle
    one. The deadline only matters when something is really broken.
    """
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - t0


def established(port: int) -> int:
    """Open IPv4 TCP connections whose local end is ``port`` (a server's side), from /proc/net/tcp.

    A server's close shows here at once (its side leaves ESTABLISHED), whatever the client saw.
    """
    n = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if parts[3] == "01" and int(parts[1].rsplit(":", 1)[1], 16) == port:
            n += 1
    return n


def recv_exactly(sock: socket.socket, n: int, peer: str = "the peer") -> bytes:
    """``n`` octets from a blocking socket; a close before them fails the test, naming ``peer``."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"{peer} closed the socket"
        data += chunk
    return data


def caught_signals(pid: int, mask: str = "SigCgt") -> set[int]:
    """Signals process ``pid`` has a handler for (the SigCgt mask of /proc/PID/status;
    ``mask="SigIgn"``: the signals it ignores)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{mask}:"):
            bits = int(line.split()[1], 16)
            return {n for n in range(1, 65) if bits >> (n - 1) & 1}
    return set()


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL when it has not exited after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def traced_message(received: int, delivered_to: int = 0, subject: str = "hops") -> bytes:
    """A CRLF message that has passed hops already: ``received`` Received: fields and
    ``delivered_to`` Delivered-To: fields on top of its own header."""
    trace = b"Received: from a.test by b.test; Mon, 1 Jan 2024 00:00:00 +0000\r\n" * received
    trace += b"Delivered-To: someone@b.test\r\n" * delivered_to
    return trace + f"From: a@src.test\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()


def fastmta_cmd(*args: str) -> list[str]:
    return [PYTHON, "-m", "fastmta", *args]


def run_fastmta(
    *args: str, input: bytes | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    """Run one ``fastmta`` command to completion."""
    return subprocess.run(fastmta_cmd(*args), input=input, capture_output=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=ROOT)  # fmt: skip


class ServerProcess:
    """``fastmta serve --config FILE`` as a real subprocess; stdout is the JSON delivery log."""

    def __init__(
        self, config_path: Path, wait_for: tuple[str, int] | None, env: dict[str, str] | None = None
    ):
        self.config_path = config_path
        self.log_path = config_path.with_suffix(".stdout")
        self.err_path = config_path.with_suffix(".stderr")
        self._out = open(self.log_path, "wb")  # noqa: SIM115
        self._err = open(self.err_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            fastmta_cmd("serve", "--config", str(config_path)),
            stdout=self._out, stderr=self._err, cwd=ROOT, env={**os.environ, **(env or {})},
        )  # fmt: skip
        if wait_for is not None:
            try:
                self.wait_listening(*wait_for)
                self.wait_signal_handlers()
            except BaseException:
                self.stop()
                raise

    def wait_listening(self, host: str, port: int, timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"fastmta exited with {self.proc.returncode}:\n{self.stderr()}")
            with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
                return
            time.sleep(0.05)
        raise AssertionError(f"fastmta not listening on {host}:{port} after {timeout}s:\n{self.stderr()}")

    def wait_signal_handlers(self, timeout: float = 30.0) -> None:
        """Until SIGTERM and SIGHUP are the server's own (SigCgt in /proc): it listens, and may
        even answer, a moment before it installs its handlers, and a signal in between
        would kill it with the default action instead of draining or reloading."""

        def installed() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"fastmta exited with {self.proc.returncode}:\n{self.stderr()}")
            return {signal.SIGTERM, signal.SIGHUP} <= caught_signals(self.proc.pid)

        wait_until(installed, timeout, "the server's SIGTERM and SIGHUP handlers")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def log_lines(self) -> list[str]:
        self._out.flush()
        return self.log_path.read_text(errors="replace").splitlines()

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        """The delivery log's records so far, those of one ``event`` when given."""
        recs = [json.loads(line) for line in self.log_lines() if line.startswith("{")]
        return [r for r in recs if event is None or r["event"] == event]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def loop_exceptions(self) -> list[str]:
        """The server's reports of exceptions its event loops left unhandled (any worker's)."""
        return [line for line in self.stderr().splitlines() if LOOP_EXCEPTION in line]

    def stop(self, timeout: float = 30.0) -> int:
        """Stop the server; a test whose server left an exception unhandled fails here."""
        stop_process(self.proc, timeout)
        if not self._err.closed:
            self._out.close()
            self._err.close()
            if self.loop_exceptions():
                raise AssertionError(f"fastmta left exceptions unhandled:\n{self.stderr()[-6000:]}")
        return self.proc.returncode


@contextlib.contextmanager
def fastmta_server(
    config_path: Path, wait_for: tuple[str, int] | None, env: dict[str, str] | None = None
) -> Iterator[ServerProcess]:
    server = ServerProcess(config_path, wait_for, env)
    try:
        yield server
    finally:
        server.stop()
