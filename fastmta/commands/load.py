# SPDX-License-Identifier: MIT
"""``fastmta load``: drive any SMTP server with bounded load and report rate, latency and errors."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys

from fastmta import loadgen
from fastmta.commands import load_config_or_exit
from fastmta.config import parse_duration, parse_hostport, parse_size


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastmta load",
        description="SMTP load generator (uvloop). The run stops at --count messages or after "
        "--duration, whichever comes first; at least one of them bounds it.",
    )
    p.add_argument(
        "--server",
        "-s",
        default=None,
        help="host:port [the first listener of --config / $FASTMTA_CONFIG, else 127.0.0.1:2525]",
    )
    # Long form only: -c is the connection count here, as in smtp-source.
    p.add_argument(
        "--config", metavar="FILE", default=None, help="fastmta config whose first listener to load"
    )
    p.add_argument("-c", "--connections", type=int, default=1, help="concurrent connections [1]")
    p.add_argument("-m", "--per-connection", type=int, default=1,
                   help="messages per connection before QUIT and reconnect [1]")  # fmt: skip
    p.add_argument("-n", "--count", type=int, default=None, help="total messages [1000 unless --duration]")
    p.add_argument("-d", "--duration", default=None, help='time bound, e.g. "30s", "2m"')
    body = p.add_mutually_exclusive_group()
    body.add_argument("--size", default="4KiB", help='message size incl. headers, e.g. 4096, "100KiB" [4KiB]')
    body.add_argument("--corpus", metavar="DIR", help="send the *.eml files under DIR in turn")
    p.add_argument("--pipelining", action="store_true", help="send MAIL, RCPT and DATA in one write")
    tls = p.add_mutually_exclusive_group()
    tls.add_argument("--starttls", action="store_true", help="STARTTLS first (certificate not verified)")
    tls.add_argument("--tls", action="store_true", help="implicit TLS, as on port 465 (not verified)")
    p.add_argument(
        "--auth",
        metavar="USER[:PASS]",
        help="AUTH PLAIN after EHLO; the password from $FASTMTA_PASSWORD when not given",
    )
    p.add_argument("--proxy", choices=("v1", "v2"), help="send a HAProxy PROXY header first")
    p.add_argument(
        "--proxy-from",
        metavar="CIDR",
        default="127.0.0.1/32",
        help="client addresses the PROXY headers claim, one after another [127.0.0.1/32]",
    )
    p.add_argument("--rset", action="store_true", help="RSET between messages on one connection")
    p.add_argument("--from", dest="sender", default=loadgen.DEFAULT_SENDER, help="envelope sender")
    p.add_argument("--to", dest="recipients", action="append", metavar="ADDR",
                   help=f"recipient; repeat for several [{loadgen.DEFAULT_RECIPIENT}]")  # fmt: skip
    p.add_argument("--rate", type=float, default=0.0, help="messages/s over the run; 0 = as fast as possible")
    p.add_argument("--helo", default="loadgen.fastmta.test", help="EHLO name")
    p.add_argument("--timeout", default="30s", help="drop a connection silent for this long [30s]")
    p.add_argument("--procs", type=int, default=1, help="generator processes (one uvloop each) [1]")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line on stderr")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        host, port = (
            parse_hostport(args.server, 25)
            if args.server
            else load_config_or_exit(args.config).listeners[0].address
        )
        duration = parse_duration(args.duration) if args.duration else None
        timeout = parse_duration(args.timeout)
        ipaddress.ip_network(args.proxy_from, strict=False)
        raw = (
            loadgen.load_corpus(args.corpus)
            if args.corpus
            else [loadgen.make_message(parse_size(args.size), args.sender, (args.recipients or [""])[0])]
        )
    except (ValueError, OSError) as e:
        print(f"fastmta load: {e}", file=sys.stderr)
        return 64
    auth = None
    if args.auth:
        user, sep, password = args.auth.partition(":")
        auth = (user, password if sep else os.environ.get("FASTMTA_PASSWORD", ""))
    if args.proxy and args.tls:
        print("fastmta load: --proxy goes before TLS; use it with --starttls, not --tls", file=sys.stderr)
        return 64
    count = args.count if args.count is not None or duration else 1000
    if args.connections < 1 or args.per_connection < 1 or (count is not None and count < 1):
        print("fastmta load: -c, -m and --count must be at least 1", file=sys.stderr)
        return 64
    spec = loadgen.LoadSpec(
        host=host, port=port, connections=args.connections, per_connection=args.per_connection,
        count=count, duration=duration, messages=loadgen.payloads(raw), sender=args.sender,
        recipients=tuple(args.recipients or (loadgen.DEFAULT_RECIPIENT,)), pipelining=args.pipelining,
        starttls=args.starttls, tls=args.tls, auth=auth, proxy=args.proxy or "", proxy_from=args.proxy_from,
        rset=args.rset, rate=args.rate, helo=args.helo,
        timeout=timeout,
    )  # fmt: skip
    progress = None if args.quiet else loadgen.Progress(count, duration)
    try:
        stats = loadgen.run(spec, procs=args.procs, progress=progress)
    except KeyboardInterrupt:
        return 130
    finally:
        if progress is not None:
            progress.finish()
    summary = stats.summary(spec)
    if args.json:
        print(json.dumps(summary))
    else:
        print(loadgen.format_report(summary))
    return 0 if stats.ok else 1
