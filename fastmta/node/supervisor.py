# SPDX-License-Identifier: MIT
"""The supervisor of ``[server] workers = N > 1``: N worker processes, one per core.

Each worker is a fresh ``fastmta serve`` process (spawned, not forked: no
threads or loop state cross a fork) that binds every listener with
SO_REUSEPORT, so the kernel spreads connections over the workers, and runs its
own loop, parser, spool shard ``<spool path>/<n>/`` and scheduler. The
supervisor itself touches no mail. It:

* moves queued mail out of shards no worker will serve (a changed ``workers``);
* restarts a worker that dies (with a growing pause if it keeps dying); the new
  worker recovers the shard, so nothing acknowledged is lost;
* forwards SIGTERM/SIGINT (then waits for every worker) and SIGHUP;
* serves ``/metrics`` for the whole node (prometheus-client multiprocess mode in
  a fresh directory) and ``/healthz``, which is 200 only while every worker is ready;
* relays the workers' JSON delivery log line by line when stdout is a pipe or a
  socket (journald, Docker), where writes from several processes could interleave.

Workers inherit ``PROMETHEUS_MULTIPROC_DIR`` and keep their metric values in
memory (``worker_metrics.py``), writing them to that directory once a second
and when the supervisor asks before each scrape. This module imports nothing
that creates metrics, so a worker can switch value storage before they exist.
A worker that fails before it was ever ready (a port in use, a bad
certificate) stops the whole start with its exit status, instead of being
restarted forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import signal
import socket
import stat
import sys
import time
from collections.abc import Iterator
from typing import Any

from fastmta.config import Config, address_in_use

WORKER_ENV = "FASTMTA_WORKER"  # "<index>/<count>/<lifeline fd>", set for workers only
# lifeline bytes: worker → supervisor READY once, FLUSHED after each FLUSH request
READY, FLUSH, FLUSHED = b"R", b"F", b"f"
_FLUSH_WAIT = 0.5  # a scrape waits at most this long for the workers' values
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_FIRST_PAUSE = 0.1  # before restarting a worker that died
_MAX_PAUSE = 30.0  # a worker that keeps dying at start is retried at most this often
_STABLE = 10.0  # a worker that lived this long resets the pause
_KILL_MARGIN = 15.0  # after shutdown_grace, workers still running get SIGKILL
_READY_TIMEOUT = 300.0  # a worker not ready this long after its start is stuck: SIGKILL


def worker_identity() -> tuple[int, int, int] | None:
    """(index, count, lifeline fd) when this process is a worker, else None."""
    raw = os.environ.get(WORKER_ENV)
    if not raw:
        return None
    index, count, fd = (int(x) for x in raw.split("/"))
    return index, count, fd


def prepare_worker_metrics() -> None:
    """In a worker, before anything creates a metric: buffered values (worker_metrics.py).

    The variable is then dropped so the worker's own children (its spool writer)
    keep plain in-memory metrics and leave no files behind for the supervisor to read.
    """
    from fastmta.node import worker_metrics

    worker_metrics.install(os.environ.pop(MULTIPROC_ENV))


def say(text: str) -> None:
    print(f"fastmta: supervisor: {text}", file=sys.stderr, flush=True)


class Worker:
    """One worker slot: the current process, its lifeline, whether it said it is ready."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.lifeline: socket.socket | None = None
        self.ready = False
        self.ever_ready = False
        self.reload_pending = False  # a SIGHUP came before this process could take one
        self.restarts = 0
        self.started = 0.0
        self.flushed: asyncio.Future[None] | None = None  # answer to the pending FLUSH

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None


class Supervisor:
    """Runs N workers until SIGTERM; see the module docstring."""

    def __init__(self, cfg: Config, config_path: str | None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.count = cfg.server.workers
        self.workers = [Worker(i) for i in range(self.count)]
        self.stopping = False
        self._stop = asyncio.Event()
        self._relay = _is_stream(sys.stdout.fileno())
        self.failed = 0  # exit status of a worker that could not start

    def run(self) -> int:
        return asyncio.run(self._main())

    async def _main(self) -> int:
        from fastmta.spool import shards
        from fastmta.spool.store import ensure_dir

        ensure_dir(self.cfg.spool.path)
        self._check_addresses()
        shards.adopt_orphans(self.cfg.spool, self.count)
        self._prepare_multiproc_dir()
        loop = self._loop = asyncio.get_running_loop()
        exporter = self._start_exporter()
        for sig, handler in ((signal.SIGTERM, self.stop), (signal.SIGINT, self.stop),
                             (signal.SIGHUP, self._forward_hup)):  # fmt: skip
            loop.add_signal_handler(sig, handler)
        say(f"starting {self.count} workers (spool shards {self.cfg.spool.path}/0..{self.count - 1})")
        keepers = [loop.create_task(self._keep(w)) for w in self.workers]
        await self._stop.wait()
        say("stopping every worker")
        for w in self.workers:
            self._signal(w, signal.SIGTERM)
        _, pending = await asyncio.wait(keepers, timeout=self.cfg.server.shutdown_grace + _KILL_MARGIN)
        if pending:
            say(f"{len(pending)} worker(s) still running after the grace period: killing them")
            for w in self.workers:
                self._signal(w, signal.SIGKILL)
            await asyncio.wait(pending, timeout=10)
        exporter.close()
        say("stopped")
        return self.failed

    def stop(self) -> None:
        self.stopping = True
        self._stop.set()

    def _check_addresses(self) -> None:
        """Refuse to start where another process listens (another fastmta, say).

        The workers bind with SO_REUSEPORT so that they can share each address; the
        kernel would let any other SO_REUSEPORT socket of the same user join them
        and take part of the traffic. A bind without it first fails on an address
        held by anyone (only a simultaneous start of two instances slips through).
        """
        for lcfg in self.cfg.listeners:
            host, port = lcfg.address
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family) as probe, address_in_use(f"listener {lcfg.label}", lcfg.address):
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
                probe.bind((host, port))

    def healthy(self) -> bool:
        """Every worker is up and has said it is ready (called from the exporter thread)."""
        return not self.stopping and all(w.ready for w in self.workers)

    def _forward_hup(self) -> None:
        """SIGHUP: every worker reloads; a new ``workers`` count needs a restart (say so)."""
        from fastmta import config as config_mod

        say("SIGHUP: asking every worker to reload")
        with contextlib.suppress(config_mod.ConfigError):  # the workers report a bad file themselves
            wanted = config_mod.load(self.config_path).server.workers
            if wanted != self.count:
                say(f"workers = {wanted} in the configuration: running {self.count} until a restart")
        for w in self.workers:
            if w.ready:
                self._signal(w, signal.SIGHUP)
            else:  # still starting (a SIGHUP could kill it before its handler is in): on "ready"
                w.reload_pending = True

    @staticmethod
    def _signal(w: Worker, sig: int) -> None:
        if w.proc is not None and w.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                w.proc.send_signal(sig)

    # --- one worker slot ----------------------------------------------------------

    async def _keep(self, w: Worker) -> None:
        """Run worker ``w``; while not stopping, restart it whenever it exits."""
        pause = _FIRST_PAUSE
        while True:
            try:
                code = await self._run_once(w)
            except OSError as e:  # cannot even spawn (fd or process limit): try again later
                say(f"worker {w.index}: cannot start: {e}")
                code = None
            if self.stopping:
                return
            if not w.ever_ready:
                say(f"worker {w.index} failed to start ({_describe(code)}): stopping")
                self.failed = code if code and code > 0 else 1
                self.stop()
                return
            lived = time.monotonic() - w.started
            pause = _FIRST_PAUSE if lived >= _STABLE else min(_MAX_PAUSE, pause * 2)
            w.restarts += 1
            say(f"worker {w.index} exited ({_describe(code)}) after {lived:.1f}s; restarting in {pause:.1f}s")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), pause)
            if self.stopping:
                return

    async def _run_once(self, w: Worker) -> int | None:
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env[WORKER_ENV] = f"{w.index}/{self.count}/{theirs.fileno()}"
        cmd = [sys.executable, "-m", "fastmta", "serve"]
        if self.config_path is not None:
            cmd += ["--config", self.config_path]
        try:
            w.proc = await asyncio.create_subprocess_exec(
                *cmd, env=env, pass_fds=[theirs.fileno()], stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if self._relay else None,
            )  # fmt: skip
        finally:
            theirs.close()
        w.started = time.monotonic()
        w.reload_pending = False  # a new process reads the configuration as it is now
        w.lifeline = ours
        loop = asyncio.get_running_loop()
        ours.setblocking(False)
        loop.add_reader(ours.fileno(), self._worker_says, w)
        relay = loop.create_task(self._relay_stdout(w.proc)) if self._relay else None
        watchdog = loop.create_task(self._kill_if_stuck(w))
        try:
            code = await w.proc.wait()
            if relay is not None:
                await relay
            return code
        finally:
            watchdog.cancel()
            w.ready = False
            if w.flushed is not None and not w.flushed.done():
                w.flushed.set_result(None)  # a scrape waiting on this worker need not wait longer
            loop.remove_reader(ours.fileno())
            ours.close()
            w.lifeline = None
            self._mark_dead(w.proc.pid)

    async def _kill_if_stuck(self, w: Worker) -> None:
        """Spool recovery takes seconds even for a million messages: minutes without
        "ready" means a hang, which a restart (or a failed start) handles better."""
        await asyncio.sleep(_READY_TIMEOUT)
        if not w.ready and not self.stopping:
            say(f"worker {w.index} not ready after {_READY_TIMEOUT:.0f}s: killing it")
            self._signal(w, signal.SIGKILL)

    def _worker_says(self, w: Worker) -> None:
        assert w.lifeline is not None
        try:
            data = w.lifeline.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if READY in data:
            w.ready = w.ever_ready = True
            say(f"worker {w.index} ready (pid {w.pid})")
            if w.reload_pending:
                w.reload_pending = False
                self._signal(w, signal.SIGHUP)
        if FLUSHED in data and w.flushed is not None and not w.flushed.done():
            w.flushed.set_result(None)
        if not data:
            w.ready = False
            asyncio.get_running_loop().remove_reader(w.lifeline.fileno())

    async def _relay_stdout(self, proc: asyncio.subprocess.Process) -> None:
        """Copy a worker's delivery log to ours in whole lines (one ``write`` per batch of lines)."""
        assert proc.stdout is not None
        tail = b""
        while chunk := await proc.stdout.read(65536):
            data = tail + chunk
            cut = data.rfind(b"\n") + 1
            tail = data[cut:]
            if cut:
                _write_all(1, data[:cut])
        if tail:
            _write_all(1, tail + b"\n")

    # --- metrics ----------------------------------------------------------------------

    def _prepare_multiproc_dir(self) -> None:
        """A clean directory for the workers' metric files: ``$PROMETHEUS_MULTIPROC_DIR``, else
        ``<spool path>/.metrics`` (not /tmp: a supervisor killed by SIGKILL leaves nothing
        behind that the next start does not clear)."""
        path = os.environ.get(MULTIPROC_ENV) or os.path.join(self.cfg.spool.path, ".metrics")
        os.makedirs(path, mode=0o700, exist_ok=True)
        for f in glob.glob(os.path.join(path, "*.db")):  # stale series of an earlier run
            os.unlink(f)
        os.environ[MULTIPROC_ENV] = path

    def flush_workers(self) -> None:
        """Have every ready worker write its metric values out (exporter thread; bounded wait)."""
        fut = asyncio.run_coroutine_threadsafe(self._flush_all(), self._loop)
        with contextlib.suppress(Exception):  # a slow worker's values are at most a second old
            fut.result(_FLUSH_WAIT + 0.1)

    async def _flush_all(self) -> None:
        waits = []
        for w in self.workers:
            if not w.ready or w.lifeline is None:
                continue
            if w.flushed is None or w.flushed.done():
                w.flushed = self._loop.create_future()
                with contextlib.suppress(OSError):
                    w.lifeline.send(FLUSH)
            waits.append(w.flushed)
        if waits:
            await asyncio.wait(waits, timeout=_FLUSH_WAIT)

    def _start_exporter(self) -> Any:
        from fastmta import metrics
        from fastmta.node.exporter import serve_metrics
        from fastmta.spool import shards

        registry = metrics.default_registry(first=_WorkersCollector(self))
        spool_cfg = self.cfg.spool
        metrics.set_spool_stats_source(lambda: shards.usage(spool_cfg))
        with address_in_use("metrics", self.cfg.metrics.address):
            exporter = serve_metrics(self.cfg.metrics.address, self.healthy, registry)
        if exporter.address is not None:
            host, port = exporter.address
            say(f"metrics of every worker on http://{f'[{host}]' if ':' in host else host}:{port}/metrics")
        return exporter

    @staticmethod
    def _mark_dead(pid: int) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


class _WorkersCollector:
    """Collected first: asks the workers to write their values out, then yields
    ``fastmta_workers``, ``fastmta_workers_ready``, ``fastmta_worker_restarts_total``."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        self.sup.flush_workers()
        workers = self.sup.workers
        yield GaugeMetricFamily("fastmta_workers", "Worker processes configured", len(workers))
        yield GaugeMetricFamily(
            "fastmta_workers_ready", "Worker processes up and ready", sum(w.ready for w in workers)
        )
        yield CounterMetricFamily(
            "fastmta_worker_restarts",
            "Worker processes restarted after they exited",
            sum(w.restarts for w in workers),
        )


def _is_stream(fd: int) -> bool:
    """stdout is a pipe or a socket: concurrent writes from several processes could interleave."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            time.sleep(0.001)
        except BrokenPipeError:
            return


def _describe(code: int | None) -> str:
    if code is None:
        return "not started"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"
