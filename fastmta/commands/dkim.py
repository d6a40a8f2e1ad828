# SPDX-License-Identifier: MIT
"""``fastmta dkim keygen``: a new signing key and the DNS record that publishes it."""

from __future__ import annotations

import argparse
import os
import sys

from fastmta.dkim import keys


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="fastmta dkim", description="DKIM key management.")
    sub = ap.add_subparsers(dest="action", required=True)
    gen = sub.add_parser("keygen", help="write <dir>/<domain>.<selector>.pem (0600), print the TXT record")
    gen.add_argument("--domain", required=True)
    gen.add_argument("--selector", required=True)
    gen.add_argument("--algorithm", choices=("rsa", "ed25519"), default="rsa")
    gen.add_argument("--bits", type=int, default=2048, help="RSA key size [2048]")
    gen.add_argument("--dir", default=".", help="where the key file goes [.]")
    args = ap.parse_args(argv)
    domain = args.domain.strip().lower().rstrip(".")
    if args.algorithm == "rsa" and not keys.MIN_RSA_BITS <= args.bits <= 8192:
        print(f"fastmta dkim keygen: --bits must be from {keys.MIN_RSA_BITS} to 8192", file=sys.stderr)
        return 64
    if not domain or "/" in domain or "/" in args.selector or not args.selector:
        print("fastmta dkim keygen: --domain and --selector must be DNS names", file=sys.stderr)
        return 64
    path = os.path.join(args.dir, f"{domain}.{args.selector}.pem")
    key = keys.generate(args.algorithm, args.bits)
    try:
        keys.write(key, path)
    except FileExistsError:
        print(f"fastmta dkim keygen: {path} exists; not overwriting a key that may be published",
              file=sys.stderr)  # fmt: skip
        return 73
    except OSError as e:
        print(f"fastmta dkim keygen: cannot write {path}: {e.strerror}", file=sys.stderr)
        return 73
    print(f"fastmta dkim keygen: wrote {path}", file=sys.stderr)
    print(keys.dns_record(domain, args.selector, key))
    return 0
