# SPDX-License-Identifier: MIT
"""MTA-STS's pure parts: the TXT record, the strict policy parser, MX patterns, the cache."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastmta.delivery.mtasts import (
    MAX_AGE_LIMIT,
    MAX_POLICY_BYTES,
    Policy,
    PolicyCache,
    PolicyError,
    mx_matches,
    parse_policy,
    parse_txt,
)
from fastmta.delivery.tlsstate import StateFile

GOOD = b"version: STSv1\r\nmode: enforce\r\nmx: mx1.a.test\r\nmx: *.b.test\r\nmax_age: 86400\r\n"


@pytest.mark.parametrize(("records", "ident"), [
    (('"v=STSv1; id=20240101T000000;"',), "20240101T000000"),
    (('"v=STSv1; " "id=abc"',), "abc"),  # one record split into strings
    (('"v=STSv1;id=abc;ext=1"',), "abc"),
    (('"v=spf1 -all"', '"v=STSv1; id=x1"'), "x1"),  # other TXT records are ignored
    (('"v=STSv1; id=' + "a" * 32 + '"',), "a" * 32),
    (('"v=STSv1; id=' + "a" * 33 + '"',), None),  # RFC 8461 §3.1: 1*32 alphanumerics
    (('"v=STSv1; id=a-b"',), None),
    (('"v=STSv1"',), None),
    (('"v=STSv1; id=1"', '"v=STSv1; id=2"'), None),  # two policies: none
    (('"v=STSv2; id=1"',), None),
    ((), None),
])  # fmt: skip
def test_parse_txt(records: tuple[str, ...], ident: str | None) -> None:
    assert parse_txt(records) == ident


def test_parse_policy() -> None:
    p = parse_policy(GOOD, "a.test", "id1", now=1000.0)
    assert (p.mode, p.mx, p.max_age, p.expires) == ("enforce", ("mx1.a.test", "*.b.test"), 86400, 87400.0)
    assert p.matches("mx1.a.test") and p.matches("MX7.b.test.") and not p.matches("b.test")
    lf = parse_policy(GOOD.replace(b"\r\n", b"\n"), "a.test", "id1", 0.0)  # LF alone is allowed
    assert lf.mx == p.mx
    assert parse_policy(b"version: STSv1\nmode: none\nmax_age: 0\n", "a.test", "x", 0).mode == "none"
    assert parse_policy(GOOD + b"future_key: something\r\n", "a.test", "x", 0).mode == "enforce"


@pytest.mark.parametrize(("body", "why"), [
    (GOOD.replace(b"STSv1", b"STSv2"), "version"),
    (GOOD.replace(b"enforce", b"strict"), "mode"),
    (GOOD.replace(b"86400", b"-1"), "max_age"),
    (GOOD.replace(b"86400", str(MAX_AGE_LIMIT + 1).encode()), "max_age"),
    (b"version: STSv1\r\nmode: enforce\r\nmax_age: 60\r\n", "no mx"),
    (GOOD + b"mode: testing\r\n", "twice"),
    (GOOD.replace(b"mx1.a.test", b"*.*.a.test"), "mx pattern"),
    (GOOD.replace(b"mx1.a.test", b"mx1..a.test"), "mx pattern"),
    (GOOD + b"no colon here\r\n", "bad policy line"),
    (GOOD + "mx: m\u00e9.a.test\r\n".encode(), "ASCII"),
])  # fmt: skip
def test_bad_policies(body: bytes, why: str) -> None:
    with pytest.raises(PolicyError, match=why):
        parse_policy(body, "a.test", "x", 0.0)


def test_limits_at_and_past_the_edge() -> None:
    assert (
        parse_policy(GOOD.replace(b"86400", str(MAX_AGE_LIMIT).encode()), "a", "x", 0).max_age
        == MAX_AGE_LIMIT
    )
    pad = b"x: " + b"y" * (MAX_POLICY_BYTES - len(GOOD) - 5) + b"\r\n"
    assert len(GOOD + pad) == MAX_POLICY_BYTES
    assert parse_policy(GOOD + pad, "a", "x", 0).mode == "enforce"
    with pytest.raises(PolicyError, match="64 KiB"):
        parse_policy(GOOD + b"y" + pad, "a", "x", 0)


@pytest.mark.parametrize(("pattern", "host", "match"), [
    ("mx.a.test", "mx.a.test", True), ("mx.a.test", "MX.A.TEST.", True), ("mx.a.test", "x.mx.a.test", False),
    ("*.a.test", "mx.a.test", True), ("*.a.test", "a.test", False), ("*.a.test", "x.mx.a.test", False),
    ("*.a.test", ".a.test", False),
])  # fmt: skip
def test_mx_patterns(pattern: str, host: str, match: bool) -> None:
    assert mx_matches(pattern, host) is match


@given(st.binary(max_size=400))
def test_only_policy_errors_escape_the_parser(body: bytes) -> None:
    with contextlib.suppress(PolicyError):
        parse_policy(body, "a.test", "x", 0.0)


_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


@given(st.sampled_from(["enforce", "testing"]), st.lists(st.lists(_label, min_size=2, max_size=4), min_size=1,
       max_size=5), st.integers(0, MAX_AGE_LIMIT), st.booleans())  # fmt: skip
def test_valid_policies_parse_back(mode: str, mxs: list[list[str]], age: int, crlf: bool) -> None:
    names = [".".join(m) for m in mxs]
    nl = "\r\n" if crlf else "\n"
    text = nl.join(["version: STSv1", f"mode: {mode}", *(f"mx: {n}" for n in names), f"max_age: {age}"]) + nl
    p = parse_policy(text.encode(), "a.test", "x", 0.0)
    assert (p.mode, p.mx, p.max_age) == (mode, tuple(names), age)
    assert all(p.matches(n) for n in names)


def test_cache_expiry_none_and_persistence(tmp_path: Path) -> None:
    now = [1000.0]
    path = tmp_path / "sts" / "mta-sts.json"
    cache = PolicyCache(StateFile(str(path)), clock=lambda: now[0])
    cache.put(parse_policy(GOOD, "a.test", "id1", now[0]))
    cache.put(parse_policy(GOOD, "b.test", "id1", now[0]))
    assert json.loads(path.read_text())["policies"][0]["domain"] == "a.test"  # no loop: written at once
    again = PolicyCache(StateFile(str(path)), clock=lambda: now[0])  # a restart
    assert again.get("a.test") == cache.get("a.test") and again.get("b.test") is not None
    cache.put(Policy("a.test", "id2", "none", (), 0, now[0]))  # mode none withdraws the policy
    assert cache.get("a.test") is None and cache.get("b.test") is not None
    now[0] += 86400
    assert cache.get("b.test") is None  # max_age is over
    path.write_text("{not json")
    assert PolicyCache(StateFile(str(path))).get("b.test") is None  # a damaged file is no crash
