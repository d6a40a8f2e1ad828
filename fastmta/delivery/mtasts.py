# SPDX-License-Identifier: MIT
"""MTA-STS (RFC 8461): a domain's published promise that its MX hosts speak verified TLS.

Pure parts here: the ``_mta-sts`` TXT record, the policy file (strict: a policy that
does not parse is no policy) and MX pattern matching. ``PolicyCache`` keeps
what was fetched for its ``max_age`` and survives restarts (RFC 8461 §5: a sender
keeps policies, or an attacker who blocks the fetch after a restart wins); it is
written to a small file through ``fastmta.delivery.tlsstate``. Fetching is
``fastmta.delivery.tlspolicy``'s job: this module does no I/O but that file.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastmta.delivery.tlsstate import StateFile

MAX_AGE_LIMIT = 31_557_600  # RFC 8461 §3.2: max_age is at most about a year
MAX_POLICY_BYTES = 64 * 1024  # RFC 8461 §3.3: senders may refuse bigger policy files
MODES = ("enforce", "testing", "none")
_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_FIELD = re.compile(r"([A-Za-z0-9_.-]+):[ \t]*([\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*)?[ \t]*")


class PolicyError(ValueError):
    """A policy file that does not follow RFC 8461 §3.2; the text says what is wrong."""


@dataclass(frozen=True, slots=True)
class Policy:
    """One domain's MTA-STS policy as fetched, and when it stops counting."""

    domain: str
    id: str  # the TXT record's id when fetched: a new id means a new policy
    mode: str  # enforce | testing | none
    mx: tuple[str, ...]  # patterns: "mx.example.com" or "*.example.com"
    max_age: int
    expires: float  # fetch time + max_age (wall clock, so it survives a restart)
    text: tuple[str, ...] = ()  # the policy's lines, for TLS-RPT's "policy-string"

    def matches(self, host: str) -> bool:
        """An MX host name this policy allows (RFC 8461 §4.1)."""
        return any(mx_matches(p, host) for p in self.mx)

    def to_json(self) -> dict[str, Any]:
        return {"domain": self.domain, "id": self.id, "mode": self.mode, "mx": list(self.mx),
                "max_age": self.max_age, "expires": self.expires, "text": list(self.text)}  # fmt: skip

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Policy:
        return cls(str(d["domain"]), str(d["id"]), str(d["mode"]), tuple(map(str, d["mx"])),
                   int(d["max_age"]), float(d["expires"]), tuple(map(str, d.get("text", []))))  # fmt: skip


def parse_txt(records: tuple[str, ...]) -> str | None:
    """The policy id from the ``_mta-sts`` TXT records, or None when there is no valid one.

    RFC 8461 §3.1: records not starting with ``v=STSv1`` are ignored; more than one
    valid record (or a bad id) means no policy.
    """
    found: list[str] = []
    for rec in records:
        text = txt_text(rec)
        fields = [f.strip() for f in text.split(";")]
        if not fields or fields[0] != "v=STSv1":
            continue
        ident = None
        for f in fields[1:]:
            key, _, value = f.partition("=")
            if key.strip() == "id":
                ident = value.strip()
        if ident is None or not _ID.fullmatch(ident):
            return None
        found.append(ident)
    return found[0] if len(found) == 1 else None


def txt_text(rdata: str) -> str:
    """One TXT rdata as dnspython prints it (``"v=STSv1; " "id=1"``) → the joined strings."""
    parts = re.findall(r'"((?:[^"\\]|\\.)*)"', rdata)
    if not parts:
        return rdata
    return "".join(re.sub(r"\\(.)", r"\1", p) for p in parts)


def parse_policy(body: bytes, domain: str, ident: str, now: float) -> Policy:
    """A policy file (RFC 8461 §3.2) → Policy; PolicyError for anything not strictly valid."""
    if len(body) > MAX_POLICY_BYTES:
        raise PolicyError("policy larger than 64 KiB")
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise PolicyError("policy is not ASCII text") from None
    lines = [ln for ln in re.split(r"\r?\n", text) if ln != ""]
    fields: dict[str, str] = {}
    mx: list[str] = []
    for ln in lines:
        m = _FIELD.fullmatch(ln)
        if m is None:
            raise PolicyError(f"bad policy line {ln[:60]!r}")
        key, value = m.group(1), m.group(2) or ""
        if key == "mx":
            if not _mx_pattern_ok(value):
                raise PolicyError(f"bad mx pattern {value[:60]!r}")
            mx.append(value.lower().rstrip("."))
        elif key in ("version", "mode", "max_age"):
            if key in fields:
                raise PolicyError(f"{key} given twice")
            fields[key] = value
        # other keys: RFC 8461 §3.2 says to ignore extension fields
    if fields.get("version") != "STSv1":
        raise PolicyError("version is not STSv1")
    mode = fields.get("mode", "")
    if mode not in MODES:
        raise PolicyError(f"bad mode {mode[:20]!r}")
    age = fields.get("max_age", "")
    if not age.isdigit() or len(age) > 10 or int(age) > MAX_AGE_LIMIT:
        raise PolicyError(f"bad max_age {age[:20]!r}")
    if mode != "none" and not mx:
        raise PolicyError("no mx patterns")
    return Policy(domain, ident, mode, tuple(mx), int(age), now + int(age), tuple(lines))


_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_MX_RE = re.compile(rf"(?:\*\.)?(?:{_LABEL}\.)+{_LABEL}\.?", re.IGNORECASE)


def _mx_pattern_ok(value: str) -> bool:
    return bool(_MX_RE.fullmatch(value)) and len(value) <= 253


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 §4.1: an exact name, or ``*.d`` for exactly one label left of ``d``."""
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        first, dot, rest = host.partition(".")
        return bool(first) and bool(dot) and rest == pattern[2:]
    return host == pattern


class PolicyCache:
    """Fetched policies by domain, kept until they expire, saved to ``state`` when given.

    ``mode: none`` is not kept (RFC 8461 §5: such a policy withdraws the old one).
    """

    def __init__(self, state: StateFile | None = None, clock: Callable[[], float] = time.time,
                 max_entries: int = 100_000) -> None:  # fmt: skip
        self._state = state
        self._clock = clock
        self._max = max_entries
        self._policies: dict[str, Policy] = {}
        if state is not None:
            for d in state.load().get("policies", []):
                try:
                    p = Policy.from_json(d)
                except (KeyError, TypeError, ValueError):
                    continue  # a damaged entry is forgotten, never fatal
                if p.expires > clock():
                    self._policies[p.domain] = p

    def get(self, domain: str) -> Policy | None:
        """The unexpired policy of ``domain``, or None."""
        p = self._policies.get(domain)
        if p is not None and p.expires <= self._clock():
            del self._policies[domain]
            self._changed()
            return None
        return p

    def put(self, policy: Policy) -> None:
        if policy.mode == "none":
            self.forget(policy.domain)
            return
        if len(self._policies) >= self._max and policy.domain not in self._policies:
            self._policies.pop(min(self._policies, key=lambda d: self._policies[d].expires))
        self._policies[policy.domain] = policy
        self._changed()

    def forget(self, domain: str) -> None:
        if self._policies.pop(domain, None) is not None:
            self._changed()

    def _changed(self) -> None:
        if self._state is not None:
            self._state.save_soon(lambda: {"policies": [p.to_json() for p in self._policies.values()]})

    async def flush(self) -> None:
        """Write pending changes now (shutdown)."""
        if self._state is not None:
            await self._state.flush()
