# SPDX-License-Identifier: MIT
"""``X-Fastmta-Ref``: the token on every outgoing message that lets a complaint find its way back.

A feedback-loop report (ARF, RFC 5965) quotes the message it complains about; the
token in it names the message id, the recipient (when the transaction carried just
one) and the tenant, and an HMAC-SHA256 tag (128 bits, RFC 2104 §5 truncation) over
them proves it was ours: anyone can read a token, nobody without the key can forge
one to get an address suppressed. Form: ``base64url(id LF rcpt LF tenant) "." base64url(tag)``.

The key is ``[suppression] fbl_key_file``, else ``fbl.key`` in the node's spool
directory, written once (32 random bytes, 0600) by whichever process needs it first.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
from typing import NamedTuple

from fastmta.config import Config

HEADER = "X-Fastmta-Ref"
_PREFIX = HEADER.encode("ascii") + b": "
_TAG = 16
KEY_FILE = "fbl.key"


class Ref(NamedTuple):
    msg_id: str
    rcpt: str
    tenant: str


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _tag(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:_TAG]

    def token(self, msg_id: str, rcpt: str, tenant: str) -> bytes:
        payload = f"{msg_id}\n{rcpt}\n{tenant}".encode("utf-8", "surrogateescape")
        return _b64(payload) + b"." + _b64(self._tag(payload))

    def header(self, msg_id: str, rcpt: str, tenant: str) -> bytes:
        """The whole header line, CRLF included, to put in front of a message."""
        return _PREFIX + self.token(msg_id, rcpt, tenant) + b"\r\n"

    def verify(self, token: str) -> Ref | None:
        """The token's contents if its tag is right, else None (forged, damaged or another key)."""
        data, dot, tag = token.strip().partition(".")
        if not dot:
            return None
        try:
            payload, mac = _unb64(data), _unb64(tag)
        except ValueError:
            return None
        if not hmac.compare_digest(mac, self._tag(payload)):
            return None
        parts = payload.decode("utf-8", "surrogateescape").split("\n")
        return Ref(*parts) if len(parts) == 3 else None


def key_path(cfg: Config) -> str:
    return cfg.suppression.fbl_key_file or os.path.join(cfg.spool.node_path or cfg.spool.path, KEY_FILE)


def load_key(cfg: Config) -> bytes:
    """The HMAC key; generated on first use when no ``fbl_key_file`` is configured.

    Raises OSError when a configured file cannot be read, or is empty.
    """
    path = key_path(cfg)
    if not cfg.suppression.fbl_key_file and not os.path.exists(path):
        # written aside and linked in whole: a worker starting alongside never reads half a key
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        tmp = f"{path}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(32))
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
        os.unlink(tmp)
    with open(path, "rb") as f:
        key = f.read()
    if len(key) < 16:
        raise OSError(f"{path}: an fbl key needs at least 16 bytes")
    return key
