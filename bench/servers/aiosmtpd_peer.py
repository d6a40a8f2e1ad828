# SPDX-License-Identifier: MIT
"""aiosmtpd on uvloop as a benchmark peer: its ``Sink`` handler, or a durable one.

``aiosmtpd_peer.py PORT`` runs ``aiosmtpd.handlers.Sink`` (stores nothing);
``aiosmtpd_peer.py PORT --durable DIR`` writes one file per message and fsyncs it
(in the default thread pool, so concurrent sessions overlap their fsyncs) before
answering 250 — the simplest durable server one would write with aiosmtpd.
"""

import argparse
import asyncio
import itertools
import os

import uvloop
from aiosmtpd.handlers import Sink
from aiosmtpd.smtp import SMTP


class Durable:
    def __init__(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.seq = itertools.count()

    def _store(self, name: str, data: bytes) -> None:
        fd = os.open(os.path.join(self.directory, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
        name = f"{os.getpid()}.{next(self.seq)}"
        await asyncio.get_running_loop().run_in_executor(None, self._store, name, envelope.original_content)
        return "250 2.0.0 OK"


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("--durable", metavar="DIR")
    args = ap.parse_args()
    handler = Durable(args.durable) if args.durable else Sink()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="aiosmtpd.test", data_size_limit=50 * 1024 * 1024),
        "127.0.0.1", args.port, backlog=4096,
    )  # fmt: skip
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main())
