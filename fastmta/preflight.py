# SPDX-License-Identifier: MIT
"""Start-up checks of what the configuration names outside itself: files, keys, sockets.

``config.py`` validates the TOML on its own; this module looks at the filesystem.
``problems(cfg)`` returns every file that is missing, unreadable or unparseable as
a ``key: message`` line (the form ConfigError uses), ``warnings(cfg)`` what works
but is probably a mistake. ``fastmta check-config`` and ``fastmta serve`` both call
them, so a configuration that checks out also starts. A new file-valued key gets
its check here, once. Never prints a secret: only paths and reasons.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable

from fastmta.api import tokens
from fastmta.config import Config, is_localhost
from fastmta.dkim import keys
from fastmta.smtp.auth import AuthConfigError, Users

_CERT = b"-----BEGIN CERTIFICATE-----"
_KEY = b"PRIVATE KEY-----"


def _read(key: str, path: str, errors: list[str]) -> bytes | None:
    """The file's bytes, or None after adding why it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        errors.append(f"{key}: no such file: {path}")
    except IsADirectoryError:
        errors.append(f"{key}: is a directory, not a file: {path}")
    except OSError as e:
        errors.append(f"{key}: cannot read {path}: {e.strerror}")
    return None


def _tls(cfg: Config, errors: list[str]) -> None:
    cert_file, key_file = cfg.tls.cert_file, cfg.tls.key_file
    cert = _read("tls.cert_file", cert_file, errors) if cert_file else None
    key = _read("tls.key_file", key_file, errors) if key_file else None
    if cert is not None and _CERT not in cert:
        errors.append(f"tls.cert_file: no PEM certificate in {cert_file}")
        cert = None
    if key is not None and _KEY not in key:
        errors.append(f"tls.key_file: no PEM private key in {key_file}")
        key = None
    if cert_file and not key_file:
        errors.append("tls.key_file: required with tls.cert_file")
    if cert is None or key is None:
        return
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError) as e:
        errors.append(f"tls.key_file: cannot be loaded with tls.cert_file {cert_file}: {e}")


def _ca_file(cfg: Config, errors: list[str]) -> None:
    path = cfg.delivery.tls_ca_file
    if not path or _read("delivery.tls_ca_file", path, errors) is None:
        return
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, OSError) as e:
        errors.append(f"delivery.tls_ca_file: no usable CA certificate in {path}: {e}")


def _users(cfg: Config, errors: list[str]) -> None:
    path = cfg.policy.users_file
    if path and _read("policy.users_file", path, errors) is not None:
        try:
            Users.load(path)
        except AuthConfigError as e:
            errors.append(str(e))


def _plain_files(cfg: Config, errors: list[str]) -> None:
    if cfg.local.users_file:
        _read("local.users_file", cfg.local.users_file, errors)
    for i, route in enumerate(cfg.routes):
        if not route.auth_file:
            continue
        data = _read(f"route[{i}].auth_file", route.auth_file, errors)
        lines = (line.strip() for line in (data or b"").splitlines())
        if data is not None and not any(ln and not ln.startswith(b"#") and b":" in ln for ln in lines):
            errors.append(f'route[{i}].auth_file: no "user:password" line in {route.auth_file}')
    if cfg.log.file:
        folder = os.path.dirname(os.path.abspath(cfg.log.file))
        if not os.path.isdir(folder):
            errors.append(f"log.file: no such directory: {folder}")


def _dkim_keys(cfg: Config, errors: list[str]) -> None:
    errors.extend(keys.check(cfg.dkim))


def _local_owner(cfg: Config, errors: list[str]) -> None:
    """Only root can give the Maildir files it writes to another owner."""
    owner = cfg.local.owner
    if owner is not None and os.geteuid() != 0 and owner != (os.geteuid(), os.getegid()):
        errors.append(f"local.owner: giving mail to uid {owner[0]} gid {owner[1]} needs root; "
                      f"fastmta runs as uid {os.geteuid()}")  # fmt: skip


def _http_tokens(cfg: Config, errors: list[str]) -> None:
    """The API's tokens file: readable, well-formed, not writable by others (a line added there
    is a working token)."""
    path = cfg.http.tokens_file
    if not path:
        return
    data = _read("http.tokens_file", path, errors)
    if data is None:
        return
    try:
        entries = tokens.parse(data.decode("utf-8"), path)
    except (tokens.TokensError, UnicodeDecodeError) as e:
        errors.append(f"http.tokens_file: {e}")
        return
    if not entries:
        errors.append(
            f'http.tokens_file: no "name:sha256" line in {path} (fastmta http token NAME makes one)'
        )
    if os.stat(path).st_mode & 0o022:
        errors.append(f"http.tokens_file: {path} is writable by group or others (chmod 0600)")


CHECKS: tuple[Callable[[Config, list[str]], None], ...] = (
    _tls,
    _ca_file,
    _users,
    _plain_files,
    _dkim_keys,
    _local_owner,
    _http_tokens,
)


def problems(cfg: Config) -> list[str]:
    """Every file named by ``cfg`` that cannot be used, each line naming its key."""
    errors: list[str] = []
    for check in CHECKS:
        check(cfg, errors)
    return errors


def warnings(cfg: Config) -> list[str]:
    """What starts but is probably wrong, each line naming its key."""
    out = []
    if is_localhost(cfg.hostname):
        out.append(
            f"hostname: is {cfg.hostname!r}, which the banner, EHLO, Received: lines, Message-IDs and "
            f"MAILER-DAEMON@{cfg.hostname} all carry; set hostname to this machine's mail name"
        )
    if cfg.http.address is not None and not cfg.http.tokens_file:
        out.append("http.tokens_file: not set, so the HTTP API refuses every request but /healthz (401)")
    if (
        cfg.http.tokens_file
        and os.path.exists(cfg.http.tokens_file)
        and os.stat(cfg.http.tokens_file).st_mode & 0o004
    ):
        out.append(f"http.tokens_file: {cfg.http.tokens_file} is world-readable (chmod 0600)")
    if cfg.local.lmtp.startswith("unix:"):
        folder = os.path.dirname(cfg.local.lmtp[5:])
        if folder and not os.path.isdir(folder):
            out.append(f"local.lmtp: no such directory (is the LMTP server installed?): {folder}")
    return out
