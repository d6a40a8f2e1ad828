# SPDX-License-Identifier: MIT
"""SHA-crypt against passlib's vectors, users_file loading, SASL decoding."""

from __future__ import annotations

from pathlib import Path

import pytest
from passlib.hash import sha256_crypt, sha512_crypt

from fastmta.smtp.auth import (
    MAX_PASSWORD,
    AuthConfigError,
    Users,
    b64decode,
    decode_plain,
    make_verifier,
    sha_crypt,
)


@pytest.mark.parametrize("password", ["secret", "", "pässwörd" * 12, "x" * 200])
def test_sha_crypt_matches_passlib(password: str) -> None:
    for scheme in (sha512_crypt.using(rounds=5000), sha512_crypt.using(rounds=1000),
                   sha256_crypt.using(rounds=5000), sha256_crypt.using(rounds=1234)):  # fmt: skip
        stored = scheme.hash(password)
        verify = make_verifier(stored)
        assert verify(password.encode())
        assert not verify(password.encode() + b"x")


def test_drepper_reference_vector() -> None:
    # From the SHA-crypt specification's test vectors.
    assert sha_crypt(b"Hello world!", "saltstring", None, "6") == (
        "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"
    )
    assert sha_crypt(b"Hello world!", "saltstringsaltstring", 10000, "5") == (
        "$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA"
    )


def test_users_file(tmp_path: Path) -> None:
    f = tmp_path / "users"
    alice = sha512_crypt.using(rounds=5000).hash("pw1")  # passlib's default of 656,000 rounds is slow here
    bob = sha256_crypt.using(rounds=5000).hash("pw2")
    f.write_text(f"# comment\n\nalice:{alice}\nbob:{bob}\n")
    users = Users.load(str(f))
    assert users and users.check("alice", "pw1") and users.check("bob", "pw2")
    assert not users.check("alice", "pw2") and not users.check("nobody", "pw1")
    assert not Users.load("")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("alice\n", ":1: expected user:hash"),
        ("alice:{MD5}abc\n", "unsupported hash scheme"),
        ("alice:$2b$12$abcdefghijklmnopqrstuv\n", "bcrypt"),
    ],  # fmt: skip
)
def test_users_file_errors(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "users"
    f.write_text(text)
    with pytest.raises(AuthConfigError) as e:
        Users.load(str(f))
    assert needle in str(e.value) and "policy.users_file" in str(e.value)
    with pytest.raises(AuthConfigError):
        Users.load(str(tmp_path / "missing"))


def test_sasl_decoding() -> None:
    assert decode_plain(b"\0alice\0pw") == ("alice", "pw")
    assert decode_plain(b"alice\0alice\0pw") == ("alice", "pw")
    for bad in (b"alice\0pw", b"\0\0pw", b"bob\0alice\0pw"):
        with pytest.raises(ValueError):
            decode_plain(bad)
    assert b64decode("=") == b""
    assert b64decode("YWxpY2U=") == b"alice"
    with pytest.raises(ValueError):
        b64decode("not base64!")


def test_overlong_password_fails_unhashed() -> None:
    """SHA-crypt costs rounds x length: a 9 KB AUTH PLAIN password must not buy that CPU."""
    seen: list[int] = []

    def verify(pw: bytes) -> bool:
        seen.append(len(pw))
        return True

    users = Users({"u": verify})
    assert users.check("u", "p" * MAX_PASSWORD) and seen == [MAX_PASSWORD]
    assert not users.check("u", "p" * (MAX_PASSWORD + 1)) and seen == [MAX_PASSWORD]
