# SPDX-License-Identifier: MIT
"""The bare-uvloop limit: canned SMTP replies, line ends and end of DATA found with bytes.find.

Stores nothing and checks nothing: what Python on uvloop can do at all on this
machine. Usage: ``limit.py PORT``.
"""

import asyncio
import sys

import uvloop

REPLIES = {
    b"EHLO": b"250-limit.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n", b"HELO": b"250 limit.test\r\n",
    b"MAIL": b"250 2.1.0 Ok\r\n", b"RCPT": b"250 2.1.5 Ok\r\n", b"DATA": b"354 Go ahead\r\n",
    b"RSET": b"250 2.0.0 Ok\r\n", b"NOOP": b"250 2.0.0 Ok\r\n", b"QUIT": b"221 2.0.0 Bye\r\n",
}  # fmt: skip


class Limit(asyncio.Protocol):
    def connection_made(self, transport):
        self.t, self.buf, self.data = transport, b"", False
        transport.write(b"220 limit.test ESMTP\r\n")

    def data_received(self, chunk):
        buf, out, pos, keep = self.buf + chunk, [], 0, None
        while True:
            if self.data:  # pos sits on the CRLF that ends the DATA line, so an empty body ends too
                end = buf.find(b"\r\n.\r\n", pos)
                if end < 0:
                    keep = buf[-4:]  # a terminator may straddle two reads; the body is not stored
                    break
                pos, self.data = end + 5, False
                out.append(b"250 2.0.0 Ok: queued\r\n")
            else:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    break
                verb = buf[pos : pos + 4].upper()
                out.append(REPLIES.get(verb, b"500 5.5.1 Unknown\r\n"))
                self.data = verb == b"DATA"
                pos = end if self.data else end + 2
        self.buf = buf[pos:] if keep is None else keep
        if out:
            self.t.write(b"".join(out))
            if out[-1].startswith(b"221"):
                self.t.close()


async def main(port):
    server = await asyncio.get_running_loop().create_server(Limit, "127.0.0.1", port, backlog=4096)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
