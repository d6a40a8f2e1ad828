# SPDX-License-Identifier: MIT
"""Bearer tokens of the HTTP API: ``name:sha256-hex`` lines in ``[http] tokens_file``.

Only the SHA-256 of each token is stored, so the file gives nothing away that
could be presented. A presented token is hashed and compared with every entry
with ``hmac.compare_digest`` (no early exit on the first match either), so the
time taken says nothing about which entry, or how much of one, matched. A valid
token already seen is found again by its digest in a small table (``Tokens``),
so a client that sends many requests with one token does not pay the scan each
time; looking up a SHA-256 digest tells a caller nothing, as nobody can choose
the digest of what they present. The token's *name* is who the
request is from (its tenant); a token is never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

_LINE = re.compile(r"^([A-Za-z0-9_.@+-]{1,64}):([0-9a-fA-F]{64})$")
TOKEN_BYTES = 32
SEEN_MAX = 1024  # valid tokens remembered by digest; the table starts again when full


class TokensError(ValueError):
    """The tokens file cannot be used; the message names the line."""


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def parse(text: str, path: str = "tokens_file") -> list[tuple[str, bytes]]:
    """(name, sha256 digest) per line; blank lines and ``#`` comments are skipped."""
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if m is None:
            raise TokensError(f'{path} line {n}: expected "name:<64 hex digits of sha256(token)>"')
        out.append((m.group(1), bytes.fromhex(m.group(2))))
    return out


def load(path: str) -> list[tuple[str, bytes]]:
    try:
        with open(path, encoding="utf-8") as f:
            return parse(f.read(), path)
    except OSError as e:
        raise TokensError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise TokensError(f"{path}: not UTF-8 text") from None


def check(entries: list[tuple[str, bytes]], token: str) -> str | None:
    """The name of the entry ``token`` matches, else None; constant time in the entries."""
    return _match(entries, digest(token))


def _match(entries: list[tuple[str, bytes]], presented: bytes) -> str | None:
    found = None
    for name, want in entries:
        if hmac.compare_digest(presented, want) and found is None:
            found = name
    return found


class Tokens:
    """The tokens file's entries, and the valid tokens already seen (by their digest)."""

    def __init__(self, entries: list[tuple[str, bytes]]) -> None:
        self.entries = entries
        self._seen: dict[bytes, str] = {}  # digest of a valid token -> its name

    def __len__(self) -> int:
        return len(self.entries)

    def check(self, token: str) -> str | None:
        """As ``check``; only valid tokens are remembered, so wrong ones always pay the scan."""
        presented = digest(token)
        name = self._seen.get(presented)
        if name is None:
            name = _match(self.entries, presented)
            if name is not None:
                if len(self._seen) >= SEEN_MAX:
                    self._seen.clear()
                self._seen[presented] = name
        return name


def new(name: str) -> tuple[str, str]:
    """A fresh random token and the ``name:sha256`` line to append to the tokens file."""
    if not re.fullmatch(r"[A-Za-z0-9_.@+-]{1,64}", name):
        raise TokensError("a token name is 1 to 64 letters, digits or _ . @ + -")
    token = secrets.token_urlsafe(TOKEN_BYTES)
    return token, f"{name}:{digest(token).hex()}"
