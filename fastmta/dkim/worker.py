# SPDX-License-Identifier: MIT
"""The signing process: canonicalises, hashes and signs what the server sends.

Why a process: ``cryptography`` keeps the GIL during an RSA signature (measured:
two threads signing took as long as one), and an RSA-2048 signature costs
0.2–1 ms of CPU, which would stall the event loop for every message. Here it
runs beside the loop with its own GIL, on the other core.

Protocol on a stream socket, little-endian, flat binary (no pickle: decoding a
reply is a few ``struct`` calls per message on the loop):

* request ``<IIq`` (message length, sequence number, ``t=`` timestamp) + message;
* the first reply frame says the process is up: ``<I`` length + one line per
  entry, ``algorithm SP domain``, in the order of the entries it was given;
* then one frame for every read of requests, so messages that arrive together
  are answered together (a long batch in frames of about ``FLUSH_AFTER`` of
  work each): ``<I`` length + ``<If`` (count, CPU seconds per message
  over the batch) + per message ``<IIB`` (sequence number, length of the
  ``DKIM-Signature`` fields to prepend, number of results) + the fields +
  per result ``<HB`` (entry index, ``CODES`` index: signed, exists, error).

A message that fails to sign gets no field and ``error`` results (it goes out
unsigned, counted); the process itself never stops on one. EOF → exit.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import struct
import sys
import time

from fastmta.config import DkimConfig
from fastmta.dkim import signer

REQ = struct.Struct("<IIq")
FRAME = struct.Struct("<I")
BATCH = struct.Struct("<If")
RECORD = struct.Struct("<IIB")
RESULT = struct.Struct("<HB")
CODES = (signer.SIGNED, signer.EXISTS, signer.ERROR)
# Replies go out at least this often (seconds) while a batch is signed: the deliveries
# of the first messages start on the loop's core while the rest are signed on this one,
# and a batch of 20 RSA signatures does not hold all 20 until the last is done. Every
# frame costs the loop a wakeup (~100 µs on a busy machine), so not after each message.
FLUSH_AFTER = 0.002
log = logging.getLogger("fastmta.dkim")

Labels = list[tuple[str, str]]  # (algorithm, domain) per entry index
Reply = tuple[int, bytes, list[tuple[int, int]]]  # (seq, fields, [(entry index, code)])


def labels(entries: list[signer.Entry]) -> Labels:
    return [(e.algorithm, e.domain) for e in entries]


def encode_ready(entries: list[signer.Entry]) -> bytes:
    text = "\n".join(f"{a} {d}" for a, d in labels(entries)).encode("ascii")
    return FRAME.pack(len(text)) + text


def decode_ready(payload: bytes | bytearray) -> Labels:
    lines = bytes(payload).decode("ascii").split("\n") if payload else []
    return [(a, d) for a, _, d in (line.partition(" ") for line in lines)]


def handle(entries: list[signer.Entry], index: dict[tuple[str, str], int], seq: int, timestamp: int,
           message: bytes) -> bytes:  # fmt: skip
    """One encoded record: the fields and a result per matching entry."""
    try:
        fields, results = signer.sign(entries, message, timestamp)
        codes = [(index[a, d], CODES.index(r)) for a, r, d in results]
    except Exception as e:  # a message we cannot parse or sign: unsigned, never a dead signer
        log.error("DKIM signing failed: %s: %s", type(e).__name__, e)
        fields, codes = b"", [(i, CODES.index(signer.ERROR)) for i in range(len(entries))]
    return b"".join(
        [RECORD.pack(seq, len(fields), len(codes)), fields, *(RESULT.pack(i, c) for i, c in codes)]
    )


def decode_batch(payload: bytes | bytearray) -> tuple[float, list[Reply]]:
    """(CPU seconds per message, the replies) of one batch frame's payload."""
    count, seconds = BATCH.unpack_from(payload, 0)
    pos, out = BATCH.size, []
    for _ in range(count):
        seq, n, k = RECORD.unpack_from(payload, pos)
        pos += RECORD.size
        fields = bytes(payload[pos : pos + n])
        pos += n
        out.append((seq, fields, [RESULT.unpack_from(payload, pos + j * RESULT.size) for j in range(k)]))
        pos += k * RESULT.size
    return seconds, out


def serve(sock: socket.socket, entries: list[signer.Entry]) -> None:
    # labels may repeat (two selectors of one domain and algorithm): any index of the label will do
    index = {label: i for i, label in reversed(list(enumerate(labels(entries))))}
    buf = bytearray()
    while True:
        data = sock.recv(1 << 20)
        if not data:
            return
        buf += data
        pos, out = 0, []
        start = time.process_time()
        flush_at = time.perf_counter() + FLUSH_AFTER
        while len(buf) - pos >= REQ.size:
            n, seq, timestamp = REQ.unpack_from(buf, pos)
            if len(buf) - pos - REQ.size < n:
                break
            begin = pos + REQ.size
            out.append(handle(entries, index, seq, timestamp, bytes(buf[begin : begin + n])))
            pos = begin + n
            if time.perf_counter() >= flush_at:
                start = _reply(sock, out, start)
                out = []
                flush_at = time.perf_counter() + FLUSH_AFTER
        del buf[:pos]
        if out:
            _reply(sock, out, start)


def _reply(sock: socket.socket, out: list[bytes], start: float) -> float:
    """Send one batch frame; returns the CPU clock for the next batch's start."""
    now = time.process_time()
    payload = b"".join([BATCH.pack(len(out), (now - start) / len(out)), *out])
    sock.sendall(FRAME.pack(len(payload)) + payload)
    return now


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
    sock.sendall(encode_ready(entries))
    serve(sock, entries)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
