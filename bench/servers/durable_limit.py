# SPDX-License-Identifier: MIT
"""The durable limit: the bare-uvloop limit plus the least an LMDB-durable server must do.

The protocol is ``limit.py``'s (canned replies, ``bytes.find`` for line ends and
the end of DATA; clients wait for each reply, as both bench drivers do). On top
of it every body is gathered into one buffer (one copy), put into LMDB and
acknowledged only after its transaction is committed with LMDB's own fsyncs. The
commit runs on the loop thread, once per loop iteration, for every message that
ended in that iteration: group commit with no thread, no process and no wake-up
beyond the client's. Nothing else: no addresses parsed, no envelope, no trace
header, no queue id, no index, no metrics, no log. What this costs above the
limit is the floor of durability for a server of this design: Python on uvloop,
LMDB with its default flushes (no ``writemap``, no ``nosync``).

Each commit also deletes the previous commit's bodies, so LMDB reuses their
pages and the file stops growing: overwriting written blocks needs no file-system
metadata in the fsync (fastmta gets the same from its zeroed runway).

Usage: ``durable_limit.py PORT DIR``.
"""

import asyncio
import struct
import sys

import lmdb
import uvloop
from limit import REPLIES  # this script's own directory is first on sys.path

QUEUED = b"250 2.0.0 Ok: queued\r\n"
KEY = struct.Struct(">Q")


class Store:
    """Bodies of one loop iteration, committed together at its end."""

    def __init__(self, path: str) -> None:
        self.env = lmdb.open(path, map_size=1 << 34, sync=True, metasync=True, max_dbs=0)
        self.pending: list[tuple[DurableLimit, bytearray]] = []
        self.previous: list[bytes] = []
        self.seq = 0
        self.loop = asyncio.get_running_loop()

    def put(self, proto: "DurableLimit", body: bytearray) -> None:
        if not self.pending:
            self.loop.call_soon(self.commit)
        self.pending.append((proto, body))

    def commit(self) -> None:
        batch, self.pending = self.pending, []
        keys = []
        with self.env.begin(write=True) as txn:
            for key in self.previous:
                txn.delete(key)
            for _, body in batch:
                self.seq += 1
                key = KEY.pack(self.seq)
                txn.put(key, body, append=True)
                keys.append(key)
        self.previous = keys
        for proto, _ in batch:
            proto.committed()


class DurableLimit(asyncio.Protocol):
    store: Store

    def connection_made(self, transport):
        self.t, self.buf, self.data, self.body, self.skip = transport, b"", False, bytearray(), 0
        transport.write(b"220 limit.test ESMTP\r\n")

    def data_received(self, chunk):
        buf, out, pos = self.buf + chunk, [], 0
        while True:
            if self.data:  # pos sits on the CRLF that ends the DATA line: skip it once
                end = buf.find(b"\r\n.\r\n", pos)
                start = pos + self.skip
                if end < 0:  # keep 4 octets: a terminator may straddle two reads
                    cut = max(pos, len(buf) - 4)
                    if cut > start:
                        self.body += memoryview(buf)[start:cut]
                    pos, self.skip = cut, max(0, start - cut)
                    break
                if end + 2 > start:
                    self.body += memoryview(buf)[start : end + 2]
                pos, self.data = end + 5, False
                self.store.put(self, self.body)
                self.body = bytearray()
            else:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break
                verb = buf[pos : pos + 4].upper()
                out.append(REPLIES.get(verb, b"500 5.5.1 Unknown\r\n"))
                self.data = verb == b"DATA"
                pos, self.skip = (end, 2) if self.data else (end + 2, 0)
        self.buf = buf[pos:]
        if out:
            self.t.write(b"".join(out))
            if out[-1].startswith(b"221"):
                self.t.close()

    def committed(self):
        self.t.write(QUEUED)


async def main(port, path):
    DurableLimit.store = Store(path)
    server = await asyncio.get_running_loop().create_server(DurableLimit, "127.0.0.1", port, backlog=4096)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), sys.argv[2]))
