# SPDX-License-Identifier: MIT
"""SASL PLAIN and LOGIN (RFC 4616, draft-murchison-sasl-login) and ``users_file`` checks.

``users_file`` holds ``user:hash`` lines. SHA-crypt (``$5$`` SHA-256, ``$6$``
SHA-512, Drepper's spec) is implemented here with hashlib, since the ``crypt``
module is gone in Python 3.13; ``$2b$`` (bcrypt) and ``$argon2…`` work when their
packages are importable, and are a clear load-time error otherwise. Secrets are
never logged and comparisons are constant-time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import importlib
from collections.abc import Callable

# RFC 4954 §4: an AUTH command line with its initial response, and each SASL
# response line, may be up to 12,288 octets (CRLF included), above max_line_length.
MAX_LINE = 12_288
# SHA-crypt's cost grows with the password length (every round hashes it): longer
# passwords fail unhashed, so a 9 KB AUTH PLAIN response cannot buy 25x the CPU.
MAX_PASSWORD = 1024
_B64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ROUNDS_DEFAULT, _ROUNDS_MIN, _ROUNDS_MAX = 5000, 1000, 999_999_999
_PERM_512 = [(0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4), (47, 5, 26), (6, 27, 48),
             (28, 49, 7), (50, 8, 29), (9, 30, 51), (31, 52, 10), (53, 11, 32), (12, 33, 54), (34, 55, 13),
             (56, 14, 35), (15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60), (40, 61, 19),
             (62, 20, 41)]  # fmt: skip
_PERM_256 = [(0, 10, 20), (21, 1, 11), (12, 22, 2), (3, 13, 23), (24, 4, 14), (15, 25, 5), (6, 16, 26),
             (27, 7, 17), (18, 28, 8), (9, 19, 29)]  # fmt: skip


class AuthConfigError(ValueError):
    """``users_file`` cannot be used; the message names the file and line, never a hash."""


def _b64_from_24bit(b2: int, b1: int, b0: int, n: int) -> str:
    w = (b2 << 16) | (b1 << 8) | b0
    out = []
    for _ in range(n):
        out.append(_B64[w & 0x3F])
        w >>= 6
    return "".join(out)


def sha_crypt(password: bytes, salt: str, rounds: int | None, variant: str) -> str:
    """SHA-crypt per https://www.akkadia.org/drepper/SHA-crypt.txt; returns the full hash string."""
    h = hashlib.sha512 if variant == "6" else hashlib.sha256
    size = 64 if variant == "6" else 32
    salt_b = salt.encode()[:16]
    explicit = rounds is not None
    n_rounds = min(max(rounds or _ROUNDS_DEFAULT, _ROUNDS_MIN), _ROUNDS_MAX)
    plen = len(password)
    b = h(password + salt_b + password).digest()
    a = h(password + salt_b)
    n = plen
    while n > size:
        a.update(b)
        n -= size
    a.update(b[:n])
    n = plen
    while n:
        a.update(b if n & 1 else password)
        n >>= 1
    digest = a.digest()
    dp = h(password * plen).digest()
    p = (dp * (plen // size + 1))[:plen]
    ds = h(salt_b * (16 + digest[0])).digest()
    s = (ds * (len(salt_b) // size + 1))[: len(salt_b)]
    c = digest
    for i in range(n_rounds):
        x = h(p if i & 1 else c)
        if i % 3:
            x.update(s)
        if i % 7:
            x.update(p)
        x.update(c if i & 1 else p)
        c = x.digest()
    if variant == "6":
        enc = "".join(_b64_from_24bit(c[i], c[j], c[k], 4) for i, j, k in _PERM_512)
        enc += _b64_from_24bit(0, 0, c[63], 2)
    else:
        enc = "".join(_b64_from_24bit(c[i], c[j], c[k], 4) for i, j, k in _PERM_256)
        enc += _b64_from_24bit(0, c[31], c[30], 3)
    head = f"${variant}$" + (f"rounds={n_rounds}$" if explicit else "")
    return f"{head}{salt_b.decode()}${enc}"


def _sha_crypt_verifier(stored: str) -> Callable[[bytes], bool]:
    parts = stored.split("$")  # "", "6", ["rounds=N"], salt, hash
    rounds = None
    if len(parts) == 5 and parts[2].startswith("rounds="):
        if not parts[2][7:].isdigit():
            raise ValueError("bad rounds")
        rounds = int(parts[2][7:])
        salt = parts[3]
    elif len(parts) == 4:
        salt = parts[2]
    else:
        raise ValueError("malformed SHA-crypt hash")
    variant = parts[1]
    return lambda pw: hmac.compare_digest(sha_crypt(pw, salt, rounds, variant), stored)


def _package_verifier(stored: str, module: str) -> Callable[[bytes], bool]:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise ValueError(f"this hash needs the {module!r} package, which is not installed") from None
    if module == "bcrypt":
        return lambda pw: bool(mod.checkpw(pw, stored.encode()))
    hasher = mod.PasswordHasher()

    def verify(pw: bytes) -> bool:
        try:
            return bool(hasher.verify(stored, pw))
        except Exception:  # argon2 raises VerifyMismatchError / InvalidHash on a wrong password
            return False

    return verify


def make_verifier(stored: str) -> Callable[[bytes], bool]:
    """A function that checks a password against one stored hash; ValueError if unusable."""
    if stored.startswith(("$5$", "$6$")):
        return _sha_crypt_verifier(stored)
    if stored.startswith(("$2a$", "$2b$", "$2y$")):
        return _package_verifier(stored, "bcrypt")
    if stored.startswith("$argon2"):
        return _package_verifier(stored, "argon2")
    raise ValueError("unsupported hash scheme (use $6$, $5$, bcrypt or argon2)")


class Users:
    """The AUTH user table loaded from ``users_file``; empty table = AUTH not offered."""

    def __init__(self, verifiers: dict[str, Callable[[bytes], bool]] | None = None) -> None:
        self._verifiers = verifiers or {}
        # a constant-cost stand-in so unknown users take as long as known ones
        self._dummy = _sha_crypt_verifier(sha_crypt(b"", "fastmtadummysalt", None, "6"))

    def __bool__(self) -> bool:
        return bool(self._verifiers)

    @classmethod
    def load(cls, path: str) -> Users:
        if not path:
            return cls()
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as e:
            raise AuthConfigError(f"policy.users_file: cannot read {path}: {e.strerror}") from None
        verifiers = {}
        for no, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, stored = line.partition(":")
            if not sep or not user or not stored:
                raise AuthConfigError(f"policy.users_file: {path}:{no}: expected user:hash")
            try:
                verifiers[user] = make_verifier(stored.strip())
            except ValueError as e:
                raise AuthConfigError(f"policy.users_file: {path}:{no}: {e}") from None
        return cls(verifiers)

    def check(self, user: str, password: str) -> bool:
        """True when the password matches; slow on purpose (the hash cost), run off the loop."""
        verify = self._verifiers.get(user)
        pw = password.encode()
        if len(pw) > MAX_PASSWORD:
            return False
        if verify is None:
            self._dummy(pw)
            return False
        return verify(pw)


def b64decode(text: str) -> bytes:
    """Strict base64 of a SASL response; ``=`` alone is the empty response (RFC 4954 §4)."""
    if text == "=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("bad base64") from None


def decode_plain(data: bytes) -> tuple[str, str]:
    """RFC 4616 ``authzid NUL authcid NUL passwd`` → (user, password); ValueError when malformed
    or when an authorization identity other than the user is asked for."""
    parts = data.split(b"\0")
    if len(parts) != 3 or not parts[1]:
        raise ValueError("malformed PLAIN response")
    authzid, user, password = (p.decode("utf-8") for p in parts)
    if authzid and authzid != user:
        raise ValueError("proxy authorization not allowed")
    return user, password
