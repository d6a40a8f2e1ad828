# SPDX-License-Identifier: MIT
"""Parser benchmark: Cython twin vs pure twin vs two baselines, measured in one run.

Workloads: (a) a 1 MiB realistic body (76-octet lines, ~2% starting with a dot,
sent dot-stuffed) and (b) 4 KiB bodies, each parsed as a full DATA phase
(start_data + feed → DATA_END: terminator, unstuffing, bare CR/LF and line
length checks, body as a new bytes object). Baselines: copying the same octets
into a new bytes object, and `bytes.find(b"\\r\\n.\\r\\n")`, which only finds
the end. Extra rows: encode_data, a pipelined command batch, and BDAT bodies
(1 MiB in 64 KiB chunks, 100 KiB in 4 chunks; every chunk behind its `BDAT n`
line, the wire cut into 64 KiB reads, driven as the session does).

    python bench/parser.py [--reps 9] [--json FILE]

Each figure is the median of --reps repetitions; the machine may be shared, so
compare the ratios taken in the same run rather than absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastmta import _parser, _parser_py  # noqa: E402
from fastmta._events import DATA_END, LINE  # noqa: E402

WORDS = b"the quick brown fox jumps over lazy dog mail relay queue message header body".split()


def make_body(size: int, seed: int = 5321) -> bytes:
    """Text lines of exactly 76 octets + CRLF; about 2% of them start with a dot."""
    rng = random.Random(seed)
    lines = []
    total = 0
    while total < size:
        words = []
        length = 0
        while length < 76:
            word = rng.choice(WORDS)
            words.append(word)
            length += len(word) + 1
        line = b" ".join(words).ljust(76)[:76]
        if rng.random() < 0.02:
            line = b"." + line[1:]
        lines.append(line + b"\r\n")
        total += 78
    return b"".join(lines)[: size - size % 78] if size >= 78 else b"".join(lines)


def stuff(body: bytes) -> bytes:
    return _parser_py.encode_data(body)


def data_parse(mod: ModuleType) -> Callable[[bytes], object]:
    parser = mod.CommandParser(max_size=64 << 20)

    def run(wire: bytes) -> object:
        parser.start_data()
        return parser.feed(wire)

    return run


def bdat_wire(body: bytes, chunk: int, read: int) -> list[bytes]:
    """`body` as BDAT commands of `chunk` octets (the last with LAST), cut into reads."""
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)]
    wire = b"".join(
        b"BDAT %d%s\r\n" % (len(piece), b" LAST" if i == len(pieces) - 1 else b"") + piece
        for i, piece in enumerate(pieces)
    )
    return [wire[i : i + read] for i in range(0, len(wire), read)]


def bdat_parse(mod: ModuleType) -> Callable[[list[bytes]], object]:
    """Feed the reads; at each `BDAT n [LAST]` line start the chunk and feed(b"") on, as
    the protocol core does; return the body of the DATA_END event."""
    parser = mod.CommandParser(max_size=64 << 20)
    start_bdat, feed = parser.start_bdat, parser.feed

    def run(reads: list[bytes]) -> object:
        body = None
        for read in reads:
            events = feed(read)
            while events:
                kind, payload = events[-1]
                if kind == LINE:  # a barrier line is always the last event of its feed
                    words = payload.split()
                    start_bdat(int(words[1]), len(words) == 3)
                    events = feed(b"")
                else:
                    if kind == DATA_END:
                        body = payload
                    events = []
        return body

    return run


def command_parse(mod: ModuleType) -> Callable[[bytes], object]:
    parser = mod.CommandParser()
    return parser.feed


def timeit(fns: dict[str, Callable[[Any], object]], arg: Any, inner: int, reps: int) -> dict[str, float]:
    """Median seconds per call of each function, over `reps` rounds of `inner` calls.

    The candidates take turns inside every round, so load from other processes
    on a shared machine hits them alike and the ratios stay meaningful.
    """
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter_ns()
            for _ in range(inner):
                fn(arg)
            samples[name].append((time.perf_counter_ns() - t0) / inner / 1e9)
    return {name: statistics.median(s) for name, s in samples.items()}


def verify(wire: bytes, body: bytes) -> None:
    for mod in (_parser, _parser_py):
        events = data_parse(mod)(wire)
        assert events == [(3, body)], f"{mod.__name__} parsed the bench body wrongly"


def bench_workload(name: str, body: bytes, inner: int, reps: int) -> dict[str, object]:
    wire = stuff(body)
    verify(wire, body)
    fns = {
        "cython": data_parse(_parser),
        "python": data_parse(_parser_py),
        "copy": lambda w: w[1:],
        "find": lambda w: w.find(b"\r\n.\r\n"),
    }
    return result(name, len(wire), timeit(fns, wire, inner, reps))


def result(name: str, octets: int, rows: dict[str, float]) -> dict[str, object]:
    """One workload's timings: MB/s and ns per message of each row, the Cython twin against the others."""
    out: dict[str, object] = {
        "workload": name,
        "octets": octets,
        "seconds": rows,
        "mb_per_s": {k: octets / v / 1e6 for k, v in rows.items()},
        "ns_per_msg": {k: v * 1e9 for k, v in rows.items()},
    }
    for other in ("python", "find", "copy"):
        if other in rows:
            out[f"cython_vs_{other}"] = rows[other] / rows["cython"]
    return out


def bench_extra(
    name: str, arg: bytes, makers: dict[str, Callable[[], Callable[[bytes], object]]], inner: int, reps: int
) -> dict[str, object]:
    return result(name, len(arg), timeit({k: make() for k, make in makers.items()}, arg, inner, reps))


def bench_bdat(name: str, body: bytes, chunk: int, inner: int, reps: int) -> dict[str, object]:
    reads = bdat_wire(body, chunk, 64 << 10)
    fns = {"cython": bdat_parse(_parser), "python": bdat_parse(_parser_py)}
    for fn in fns.values():
        assert fn(reads) == body, "a twin parsed the BDAT bench body wrongly"
    fns["copy"] = b"".join  # the floor: one copy of the octets read
    return result(name, len(body), timeit(fns, reads, inner, reps))


def run(reps: int) -> dict[str, Any]:
    big = make_body(1 << 20)
    small = make_body(4096)
    commands = b"".join(
        b"MAIL FROM:<sender%d@example.test> SIZE=4096\r\nRCPT TO:<rcpt%d@example.test>\r\nRSET\r\n" % (i, i)
        for i in range(40)
    )
    results = [
        bench_workload("data_1MiB", big, inner=20, reps=reps),
        bench_workload("data_4KiB", small, inner=2000, reps=reps),
        bench_bdat("bdat_1MiB_64KiB_chunks", big, 64 << 10, inner=20, reps=reps),
        bench_bdat("bdat_100KiB_4_chunks", make_body(100 << 10), 25 << 10, inner=200, reps=reps),
        bench_extra(
            "encode_1MiB",
            big,
            {"cython": lambda: _parser.encode_data, "python": lambda: _parser_py.encode_data},
            inner=20,
            reps=reps,
        ),
        bench_extra(
            "encode_4KiB",
            small,
            {"cython": lambda: _parser.encode_data, "python": lambda: _parser_py.encode_data},
            inner=2000,
            reps=reps,
        ),
        bench_extra(
            "commands_120_lines",
            commands,
            {"cython": lambda: command_parse(_parser), "python": lambda: command_parse(_parser_py)},
            inner=500,
            reps=reps,
        ),
    ]
    return {
        "bench": "parser",
        "reps": reps,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": results,
    }


def print_table(report: dict[str, Any]) -> None:
    print(f"{'workload':<24}{'impl':<8}{'MB/s':>10}{'ns/msg':>14}")
    for res in report["results"]:
        for impl, mbps in res["mb_per_s"].items():
            print(f"{res['workload']:<24}{impl:<8}{mbps:>10.0f}{res['ns_per_msg'][impl]:>14.0f}")
        ratios = [f"{k}={v:.2f}x" for k, v in res.items() if k.startswith("cython_vs_")]
        print(f"{'':<24}{'':<8}  {'  '.join(ratios)}")


def main() -> int:
    ap = argparse.ArgumentParser(description="fastmta parser benchmark")
    ap.add_argument("--reps", type=int, default=9, help="repetitions (median is reported), >= 5")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = ap.parse_args()
    report = run(max(args.reps, 5))
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
