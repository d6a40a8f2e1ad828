# SPDX-License-Identifier: MIT
"""Differential fuzzer for the two parser twins (Cython and pure Python).

Random and corpus-mutated byte streams go through both twins in every mode
(commands, DATA under both bare-LF policies, BDAT, replies, the encoder) at
random chunkings. It fails when the twins disagree, when CommandParser or
encode_data raise anything, or when ReplyParser raises anything but
ParserError. A failing input is written to corpus/ so the bounded CI test
(test_fuzz_bounded.py) replays it forever after.

    python tests/fuzz/fuzz_parser.py --seconds 300 [--seed N]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
import zlib
from pathlib import Path
from types import ModuleType
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fastmta import _parser, _parser_py  # noqa: E402
from fastmta._events import ParserError  # noqa: E402

CORPUS = Path(__file__).parent / "corpus"
TOKENS = [
    b"\r\n", b"\r", b"\n", b".", b"..", b"\r\n.\r\n", b"\r\n.", b".\r\n", b"\n.\n", b"\r.\r",
    b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"a", b"x" * 77, b"\x00", b"\xff\xe9", b" ", b"\t",
    b"DATA\r\n", b"data\r\n", b" DATA\r\n", b"BDAT 5\r\n", b"BDAT 0 LAST\r\n", b"BDAT 12 LAST\r\n",
    b"STARTTLS\r\n", b"NOOP\r\n", b"MAIL FROM:<a@b.test>\r\n", b"250-", b"250 ", b"354 ", b"5xx",
]  # fmt: skip
MAX_LINES = (3, 5, 16, 512)
MAX_SIZES = (0, 1, 10, 100, 5000, 50 * 1024 * 1024)
MAX_BODY_LINES = (1, 4, 80, 998)


class Mismatch(AssertionError):
    """The twins disagree, or a parser raised what it must not."""


def make_stream(rng: random.Random, seeds: list[bytes]) -> bytes:
    """A stream of tokens, random bytes and long runs, sometimes spliced from a seed."""
    parts: list[bytes] = []
    if seeds and rng.random() < 0.3:
        seed = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(0, 4)):
            if seed:
                seed[rng.randrange(len(seed))] = rng.randrange(256)
        parts.append(bytes(seed))
    for _ in range(rng.randint(0, 40)):
        roll = rng.random()
        if roll < 0.6:
            parts.append(rng.choice(TOKENS))
        elif roll < 0.85:
            parts.append(rng.randbytes(rng.randint(0, 16)))
        else:
            parts.append(rng.choice((b"x", b".", b"\r", b"\n", b"\r\n")) * rng.randint(0, 1200))
    return b"".join(parts)


def chunk(rng: random.Random, data: bytes) -> list[bytes]:
    style = rng.random()
    if style < 0.15:
        return [data]
    if style < 0.3:
        return [data[i : i + 1] for i in range(len(data))]
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randint(1, 10)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def run_commands(mod: ModuleType, chunks: list[bytes], limits: dict[str, Any]) -> list[object]:
    """Act on barriers like a session; any exception here is a bug."""
    parser = mod.CommandParser(**limits)
    out: list[object] = []

    def handle(events: list[tuple[int, object]]) -> bool:
        acted = False
        for kind, payload in events:
            out.append((kind, payload, parser.long_lines if kind == 3 else None))
            if kind != 1:
                continue
            assert isinstance(payload, bytes)
            words = payload.split()
            verb = words[0].upper() if words else b""
            acted = True
            if zlib.crc32(payload) % 5 == 0:
                pass  # the session refused the command (503/501): just go on
            elif verb == b"DATA":
                parser.start_data()
            elif verb == b"BDAT" and len(words) > 1 and words[1].isdigit() and len(words[1]) < 7:
                parser.start_bdat(int(words[1]), len(words) > 2 and words[2].upper() == b"LAST")
            elif verb == b"STARTTLS":
                parser.discard()
            elif verb == b"RSET":
                parser.reset_body()
            else:
                acted = False
        return acted

    for piece in chunks:
        acted = handle(parser.feed(piece))
        while acted or parser.pending:
            acted = handle(parser.feed(b""))
    out.append(("pending", parser.pending))
    return out


def run_replies(mod: ModuleType, chunks: list[bytes]) -> list[object]:
    parser = mod.ReplyParser()
    out: list[object] = []
    for piece in chunks:
        try:
            out.append(parser.feed(piece))
        except ParserError:
            out.append("ParserError")
            break
    return out


def check(rng: random.Random, data: bytes) -> None:
    """One differential round over `data`; raises Mismatch on any disagreement."""
    chunks = chunk(rng, data)
    limits: dict[str, Any] = {
        "max_line": rng.choice(MAX_LINES),
        "max_size": rng.choice(MAX_SIZES),
        "bare_lf": rng.choice(("reject", "normalise")),
        "max_body_line": rng.choice(MAX_BODY_LINES),
    }
    results = []
    for mod in (_parser, _parser_py):
        try:
            results.append(
                (
                    run_commands(mod, chunks, limits),
                    run_commands(mod, [b"DATA\r\n", *chunks, b"\r\n.\r\n"], limits),
                    run_replies(mod, chunks),
                    mod.encode_data(data),
                )
            )
        except Exception as exc:  # noqa: BLE001 - any escape is the finding
            raise Mismatch(f"{mod.__name__} raised {exc!r} on {data[:80]!r} limits={limits}") from exc
    if results[0] != results[1]:
        raise Mismatch(f"twins disagree on {data[:80]!r} limits={limits} chunks={len(chunks)}")
    wire = results[0][3]
    parser = _parser.CommandParser(bare_lf="reject", max_size=len(wire))
    parser.start_data()
    events = parser.feed(wire)
    if len(events) != 1 or events[0][0] != 3:
        raise Mismatch(f"encode_data output does not parse back: {data[:80]!r}")


def load_corpus() -> list[bytes]:
    return [p.read_bytes() for p in sorted(CORPUS.glob("*.bin"))]


def fuzz(seconds: float, seed: int, max_rounds: int | None = None) -> int:
    """Run rounds until the time or round budget is spent; return the rounds done."""
    rng = random.Random(seed)
    seeds = load_corpus()
    for data in seeds:
        check(rng, data)
    deadline = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < deadline and (max_rounds is None or rounds < max_rounds):
        data = make_stream(rng, seeds)
        try:
            check(rng, data)
        except Mismatch:
            name = hashlib.sha256(data).hexdigest()[:16]
            (CORPUS / f"crash-{name}.bin").write_bytes(data)
            raise
        rounds += 1
    return rounds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    args = ap.parse_args()
    print(f"seed {args.seed}", flush=True)
    rounds = fuzz(args.seconds, args.seed)
    print(f"{rounds} rounds, no mismatch", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
