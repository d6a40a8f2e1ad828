# SPDX-License-Identifier: MIT
"""The loop's end of DKIM signing: which messages, the signing process, reuse on retry.

The remote deliverer calls ``sign`` with each stored message before sending it.
On the loop this costs one header-block scan for the ``From:`` domain (no
``[[dkim]]`` entry covers it → nothing else happens) and one socket write; the
signing itself runs in ``worker.py``'s process. The first attempt's fields are
kept per message id, so a retry or a second destination of the same message
sends the very same signature; after a restart the same key signs the stored
message to the same bytes (``t=`` is the arrival time, both algorithms are
deterministic). Local delivery never calls this: only relayed mail is signed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any

from fastmta import metrics
from fastmta.config import ConfigError, DkimConfig
from fastmta.dkim import canon, keys, signer, worker
from fastmta.dkim.worker import FRAME, REQ

log = logging.getLogger("fastmta.dkim")
_PKG_ROOT = str(Path(__file__).resolve().parent.parent.parent)
_WORKER_MAIN = "import sys; from fastmta.dkim.worker import main; sys.exit(main(sys.argv[1:]))"
REMEMBERED = 8192  # message ids whose signature is kept for a retry or another destination
_SECONDS = metrics.bound(metrics.dkim_sign_seconds)
_SIGNED, _ERROR = worker.CODES.index(signer.SIGNED), worker.CODES.index(signer.ERROR)


class SignerUnavailable(Exception):
    """The signing process is not there: the delivery waits (4xx) rather than go unsigned."""


Signed = tuple[bytes, tuple[str, ...]]  # (the DKIM-Signature fields, the d= domains)


class _Link(asyncio.Protocol):
    """One signing process: frames out, batched replies in, futures by sequence number.

    A reply settles its future with the ``Signed`` value itself, so a delivery waits
    on exactly one future and the metrics are counted here, once per reply."""

    def __init__(self, loop: asyncio.AbstractEventLoop, proc: subprocess.Popen[bytes]) -> None:
        self.loop, self.proc = loop, proc
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[Signed]] = {}
        self.ready: asyncio.Future[None] = loop.create_future()
        self.buf = bytearray()
        self.seq = 0
        self.out: list[bytes] = []
        self.labels: list[tuple[str, str]] = []  # (algorithm, domain) per entry, from the ready frame
        self.counters: list[list[Any]] = []  # [entry][code] → bound fastmta_dkim_signatures_total

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, message: bytes, timestamp: int) -> asyncio.Future[Signed]:
        fut: asyncio.Future[Signed] = self.loop.create_future()
        if self.transport is None or self.transport.is_closing():
            fut.set_exception(SignerUnavailable())
            return fut
        self.seq = seq = (self.seq + 1) & 0xFFFFFFFF or 1
        self.pending[seq] = fut
        if not self.out:  # one write per loop iteration: a commit's batch goes out, and is signed, together
            self.loop.call_soon(self._flush)
        self.out += (REQ.pack(len(message), seq, timestamp), message)
        return fut

    def _flush(self) -> None:
        out, self.out = self.out, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(out)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        while len(buf) - pos >= FRAME.size:
            (n,) = FRAME.unpack_from(buf, pos)
            end = pos + FRAME.size + n
            if len(buf) < end:
                break
            payload = buf[pos + FRAME.size : end]
            if not self.ready.done():  # the first frame: the process is up, its keys loaded
                self._started(worker.decode_ready(payload))
            else:
                self._replies(payload)
            pos = end
        del buf[:pos]

    def _started(self, labels: list[tuple[str, str]]) -> None:
        self.labels = labels
        self.counters = [
            [metrics.bound(metrics.dkim_signatures_total, alg, code) for code in worker.CODES]
            for alg, _ in labels
        ]
        self.ready.set_result(None)

    def _replies(self, payload: bytearray) -> None:
        seconds, replies = worker.decode_batch(payload)
        pending, labels, counters, observe = self.pending, self.labels, self.counters, _SECONDS.observe
        for seq, fields, codes in replies:
            domains: dict[str, None] = {}
            for i, code in codes:
                counters[i][code].inc()
                if code == _SIGNED:
                    domains[labels[i][1]] = None
                elif code == _ERROR:
                    log.error("DKIM: could not sign a message for %s; it goes out unsigned", labels[i][1])
            observe(seconds)
            fut = pending.pop(seq, None)
            if fut is not None and not fut.done():
                fut.set_result((fields, tuple(domains)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.ready.done():
            self.ready.set_exception(SignerUnavailable())
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(SignerUnavailable())

    def retire(self) -> None:
        """Stop taking work: the process answers what it has, sees EOF and exits."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write_eof()

    def reap(self, timeout: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def spawn(configs: Sequence[DkimConfig], sock: socket.socket) -> subprocess.Popen[bytes]:
    """Start a signing process for ``configs`` on its end of a socketpair."""
    entries = json.dumps([dataclasses.asdict(c) for c in configs])
    path = os.pathsep.join(filter(None, [_PKG_ROOT, os.environ.get("PYTHONPATH")]))
    cmd = [sys.executable, "-c", _WORKER_MAIN, "--fd", str(sock.fileno()), "--entries", entries]
    env = {**os.environ, "PYTHONPATH": path}
    quiet = subprocess.DEVNULL
    return subprocess.Popen(cmd, pass_fds=[sock.fileno()], stdin=quiet, stdout=quiet, env=env)


class DkimService:
    """Signs relayed messages with every matching ``[[dkim]]`` entry (see the module docstring)."""

    def __init__(self, configs: Sequence[DkimConfig]) -> None:
        self._configure(configs)
        self._link: _Link | None = None
        self._starting: asyncio.Task[_Link] | None = None
        self._retired: list[_Link] = []
        self._done: OrderedDict[str, asyncio.Future[Signed]] = OrderedDict()

    def _configure(self, configs: Sequence[DkimConfig]) -> None:
        """Check every key now (``ConfigError`` naming ``dkim[N].key_file``); the process loads them."""
        errors = keys.check(configs)
        if errors:
            raise ConfigError(errors)
        self.configs = tuple(configs)
        self.domains = tuple(signer.ascii_domain(c.domain) for c in configs)

    async def start(self) -> None:
        """Start the signing process now (a start-up failure shows here, not at the first message)."""
        await self._ensure()

    def reload(self, configs: Sequence[DkimConfig]) -> None:
        """SIGHUP: new keys and entries from the next message on; a bad key keeps the old ones.

        Signatures already made for queued messages are kept: a retry carries the
        signature its first attempt had."""
        self._configure(configs)
        link, self._link = self._link, None
        if link is not None:
            link.retire()
            self._retired.append(link)
            asyncio.get_running_loop().run_in_executor(None, link.reap, 60)

    def covers(self, message: bytes) -> bool:
        """One scan of the header block: does any entry sign this ``From:`` domain?"""
        domain = canon.from_domain(message[: canon.header_end(message)])
        return domain is not None and any(domain == d or domain.endswith("." + d) for d in self.domains)

    def sign(self, msg_id: str, arrived: float, message: bytes) -> Awaitable[Signed]:
        """(fields to prepend, d= domains) for a stored message; ``SignerUnavailable`` if the
        process is gone (it restarts for the next message).

        Not a coroutine: with the process up, the caller awaits the one future that the
        reply settles, and a retry whose signature is known gets a done future."""
        fut = self._done.get(msg_id)
        if fut is not None and not (fut.done() and (fut.cancelled() or fut.exception() is not None)):
            return fut if fut.done() else asyncio.shield(fut)  # a retry, or another destination: a
            # shield, so that cancelling one waiter leaves the signature to the others
        if not self.covers(message):
            fut = asyncio.get_running_loop().create_future()
            fut.set_result((b"", ()))
            return fut
        link = self._link
        if link is None or link.transport is None:
            fut = asyncio.ensure_future(self._start_and_send(message, int(arrived)))
        else:
            fut = link.send(message, int(arrived))
        self._remember(msg_id, fut)
        return fut

    async def _start_and_send(self, message: bytes, timestamp: int) -> Signed:
        link = await self._ensure()
        return await link.send(message, timestamp)

    def _remember(self, msg_id: str, fut: asyncio.Future[Signed]) -> None:
        """Kept for a retry; a failed or cancelled one is dropped when next looked up."""
        done = self._done
        done[msg_id] = fut
        while len(done) > REMEMBERED:
            done.popitem(last=False)

    async def _ensure(self) -> _Link:
        if self._link is not None and self._link.transport is not None:
            return self._link
        if self._starting is None or self._starting.done():
            self._starting = asyncio.get_running_loop().create_task(self._spawn())
        self._link = await asyncio.shield(self._starting)
        return self._link

    async def _spawn(self) -> _Link:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        try:
            proc = spawn(self.configs, theirs)
        finally:
            theirs.close()
        _, link = await loop.create_unix_connection(lambda: _Link(loop, proc), sock=ours)
        try:
            await asyncio.wait_for(link.ready, 60)
        except BaseException:
            link.retire()
            await loop.run_in_executor(None, link.reap, 5)
            raise
        return link

    async def close(self) -> None:
        """Let the processes answer what they have, then wait for them to exit."""
        links = [*self._retired, *([self._link] if self._link else [])]
        self._link, self._retired = None, []
        for link in links:
            link.retire()
        loop = asyncio.get_running_loop()
        for link in links:
            await loop.run_in_executor(None, link.reap, 10)
