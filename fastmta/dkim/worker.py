# SPDX-License-Identifier: MIT
"""The signing process: canonicalises, hashes and signs what the server sends.

Why a process: ``cryptography`` keeps the GIL during an RSA signature (measured:
two threads signing took as long as one), and an RSA-2048 signature costs
0.2–1 ms of CPU, which would stall the event loop for every message
(docs/performance.md, DKIM). Here it runs beside the loop with its own GIL.

Protocol on a stream socket, little-endian:

* request ``<IIq`` (message length, sequence number, ``t=`` timestamp) + message;
* reply ``<I`` length + pickled list of ``(seq, fields, results, seconds)`` for every
  request of one read: ``fields`` the ``DKIM-Signature`` fields to prepend,
  ``results`` [(algorithm, signed|exists|error, domain)], ``seconds`` the CPU time.

A message that fails to sign gets no field and ``error`` results (it goes out
unsigned, counted); the process itself never stops on one. EOF → exit.
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import signal
import socket
import struct
import sys
import time
from typing import Any

from fastmta.config import DkimConfig
from fastmta.dkim import signer

REQ = struct.Struct("<IIq")
REPLY = struct.Struct("<I")
log = logging.getLogger("fastmta.dkim")


def handle(entries: list[signer.Entry], seq: int, timestamp: int, message: bytes) -> tuple[Any, ...]:
    start = time.process_time()
    try:
        fields, results = signer.sign(entries, message, timestamp)
    except Exception as e:  # a message we cannot parse or sign: unsigned, never a dead signer
        log.error("DKIM signing failed: %s: %s", type(e).__name__, e)
        fields, results = b"", [(entry.algorithm, signer.ERROR, entry.domain) for entry in entries]
    return seq, fields, results, time.process_time() - start


def serve(sock: socket.socket, entries: list[signer.Entry]) -> None:
    buf = bytearray()
    while True:
        data = sock.recv(1 << 20)
        if not data:
            return
        buf += data
        pos, out = 0, []
        while len(buf) - pos >= REQ.size:
            n, seq, timestamp = REQ.unpack_from(buf, pos)
            if len(buf) - pos - REQ.size < n:
                break
            start = pos + REQ.size
            out.append(handle(entries, seq, timestamp, bytes(buf[start : start + n])))
            pos = start + n
        del buf[:pos]
        if out:
            payload = pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)
            sock.sendall(REPLY.pack(len(payload)) + payload)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--entries", required=True, help="JSON list of [[dkim]] tables")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server stops us by closing the socket
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    logging.basicConfig(stream=sys.stderr, format="fastmta-dkim: %(message)s")
    entries = signer.from_config([DkimConfig(**{**e, "headers": tuple(e["headers"])})
                                  for e in json.loads(args.entries)])  # fmt: skip
    sock = socket.socket(fileno=args.fd)
    sock.sendall(REPLY.pack(0))  # ready: keys loaded
    serve(sock, entries)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
