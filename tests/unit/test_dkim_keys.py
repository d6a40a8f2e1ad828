# SPDX-License-Identifier: MIT
"""``fastmta dkim keygen`` and the key checks of ``check-config`` and ``serve``."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fastmta.config import ConfigError, DkimConfig
from fastmta.dkim import keys
from fastmta.dkim.service import DkimService
from tests.fixtures.dkim import Keys
from tests.support import require_tool, run_fastmta


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_keygen_writes_a_0600_key_and_prints_one_txt_line(tmp_path: Path, algorithm: str) -> None:
    line = Keys(tmp_path).add("s1", algorithm, "Mail.Example.test")
    path = tmp_path / "mail.example.test.s1.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "\n" not in line
    m = re.fullmatch(r's1\._domainkey\.mail\.example\.test\. IN TXT ((?:"[^"]{1,255}" ?)+)', line)
    assert m, line
    strings = re.findall(r'"([^"]*)"', m.group(1))
    assert all(len(s) <= 255 for s in strings) and (algorithm == "ed25519" or len(strings) == 2)
    text = "".join(strings)
    key, found = keys.load(str(path))
    assert found == algorithm and text == keys.txt_value(key)
    assert text.startswith(f"v=DKIM1; k={algorithm}; p=")


def test_keygen_never_overwrites(tmp_path: Path) -> None:
    Keys(tmp_path).add("s1", "ed25519")
    out = run_fastmta(
        "dkim", "keygen", "--domain", "example.test", "--selector", "s1", "--dir", str(tmp_path)
    )
    assert out.returncode == 73 and b"exists" in out.stderr


def _write(path: Path, pem: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(pem)
    path.chmod(mode)
    return path


def _pem(key: object) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,  # type: ignore[attr-defined]
                             serialization.NoEncryption())  # fmt: skip


def _openssl_rsa(bits: int) -> bytes:
    """cryptography refuses to make keys under 1024 bits; openssl still does."""
    out = subprocess.run([require_tool("openssl"), "genpkey", "-algorithm", "RSA", "-pkeyopt",
                          f"rsa_keygen_bits:{bits}"], capture_output=True, check=True)  # fmt: skip
    return out.stdout


def test_rsa_size_edge(tmp_path: Path) -> None:
    assert keys.load(str(_write(tmp_path / "k1024.pem", _openssl_rsa(1024))))[1] == "rsa"
    with pytest.raises(keys.KeyFileError, match="at least 1024"):
        keys.load(str(_write(tmp_path / "k1023.pem", _openssl_rsa(1023))))


def _bad_keys(tmp: Path) -> dict[str, Path]:
    good = keys.generate("ed25519")
    return {
        "cannot read": tmp / "missing.pem",
        "cannot read ": tmp,  # a directory: unreadable as a file
        "open to group or others": _write(tmp / "group.pem", _pem(good), 0o640),
        "open to group or others ": _write(tmp / "world.pem", _pem(good), 0o604),
        "not an unencrypted PEM": _write(tmp / "junk.pem", b"-----BEGIN PRIVATE KEY-----\nnope\n"),
        "DKIM signs with RSA or Ed25519": _write(
            tmp / "ec.pem", _pem(ec.generate_private_key(ec.SECP256R1()))
        ),
        "at least 1024": _write(tmp / "small.pem", _openssl_rsa(1023)),
    }


def test_unusable_keys_are_check_config_errors_naming_the_entry(tmp_path: Path, make_config: object) -> None:
    bad = _bad_keys(tmp_path)
    good = _write(tmp_path / "good.pem", _pem(keys.generate("ed25519")))
    entries = "".join(f'[[dkim]]\ndomain = "example.test"\nselector = "s{i}"\nkey_file = "{p}"\n\n'
                      for i, p in enumerate([good, *bad.values()]))  # fmt: skip
    cfg = make_config(entries)  # type: ignore[operator]
    out = run_fastmta("check-config", "--config", str(cfg))
    assert out.returncode == 2
    lines = out.stderr.decode().splitlines()
    assert len(lines) == len(bad), lines
    for i, (why, path) in enumerate(bad.items(), start=1):
        assert lines[i - 1].startswith(f"dkim[{i}].key_file: ") and why.strip() in lines[i - 1], lines[i - 1]
        assert str(path) in lines[i - 1]
    serve = run_fastmta("serve", "--config", str(cfg), timeout=30)
    assert serve.returncode == 2 and serve.stderr.decode().splitlines() == lines
    with pytest.raises(ConfigError) as e:
        DkimService([DkimConfig(domain="example.test", selector="s", key_file=str(bad["at least 1024"]))])
    assert e.value.errors[0].startswith("dkim[0].key_file: ")


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ('domain = "example.test"\nselector = "bad selector"\nkey_file = "k"', "dkim[0].selector: expected"),
        ('domain = "example.test"\nselector = "s"', "dkim[0].key_file: required"),
        ('selector = "s"\nkey_file = "k"', "dkim[0].domain: required"),
        ('domain = "example.test"\nselector = "s"\nkey_file = "k"\ncanonicalization = "loose"',
         "dkim[0].canonicalization: expected one of"),
        ('domain = "example.test"\nselector = "s"\nkey_file = "k"\nheaders = ["Bad:Name"]',
         "dkim[0].headers: not a header field name"),
        ('domain = "example.test"\nselector = "s"\nkey_file = "k"\nl = 10', "dkim[0].l: unknown key"),
    ],
)  # fmt: skip
def test_dkim_table_shape_errors(table: str, error: str) -> None:
    import tomllib

    from fastmta import config

    with pytest.raises(ConfigError) as e:
        config.from_dict(tomllib.loads(f"[[dkim]]\n{table}\n"))
    assert any(line.startswith(error) for line in e.value.errors), e.value.errors


def test_defaults_and_two_entries_for_one_domain() -> None:
    import tomllib

    from fastmta import config

    cfg = config.from_dict(tomllib.loads(
        '[[dkim]]\ndomain = "Example.TEST."\nselector = "a"\nkey_file = "k"\n'
        '[[dkim]]\ndomain = "example.test"\nselector = "b"\nkey_file = "k2"\n'
        'canonicalization = "simple/simple"\n'
    ))  # fmt: skip
    assert [(d.domain, d.selector, d.canonicalization, d.headers) for d in cfg.dkim] == [
        ("example.test", "a", "relaxed/relaxed", ()), ("example.test", "b", "simple/simple", ())]  # fmt: skip
    assert config.from_dict({}).dkim == ()
    assert os.environ.get("FASTMTA_CONFIG") is None
