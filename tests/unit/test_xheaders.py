# SPDX-License-Identifier: MIT
"""X-Fastmta-Pool / X-Fastmta-Tenant: found in the header block only, removed exactly, checked
by the session (only clients that may relay, only pools that exist)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastmta.config import from_dict
from fastmta.smtp import replies as R
from fastmta.smtp import session as S
from fastmta.smtp.policy import Policy
from fastmta.smtp.xheaders import MAX_VALUE, extract
from tests.unit.test_session import FakeSettings, run

POOLS = {"pool": [{"name": "bulk", "sources": [{"address": "127.0.0.3", "ehlo": "m3.test"}]}],
         "policy": {"relay_domains": ["in.test"], "relay_networks": ["127.0.0.0/8"]}}  # fmt: skip


def test_none_without_the_headers() -> None:
    assert extract(b"Subject: x\r\n\r\nX-Fastmta-Pool: bulk\r\n") is None  # in the body: not a header
    assert extract(b"") is None


def test_found_removed_and_folded_lines_go_too() -> None:
    body = (
        b"From: a\r\nx-fastmta-pool :  bulk \r\nSubject: s\r\nX-FASTMTA-Tenant: t1\r\n (more)\r\n\r\nhi\r\n"
    )
    tags = extract(body)
    assert tags is not None and tags.valid
    assert (tags.pool, tags.tenant) == ("bulk", "t1")
    assert tags.body == b"From: a\r\nSubject: s\r\n\r\nhi\r\n"


VALUES = [(b"a" * MAX_VALUE, True), (b"a" * (MAX_VALUE + 1), False), (b"", False), (b"two words", False),
          (b"\xc3\xa9", False)]  # fmt: skip


@pytest.mark.parametrize(("value", "valid"), VALUES)
def test_values_at_and_past_the_limit(value: bytes, valid: bool) -> None:
    tags = extract(b"X-Fastmta-Tenant: " + value + b"\r\n\r\n")
    assert tags is not None and tags.valid is valid


_line = st.from_regex(rb"\A[A-Za-z][A-Za-z0-9-]{0,12}: [ -~]{0,30}\Z", fullmatch=True)


@given(st.lists(_line, max_size=8), st.sampled_from([b"", b"bulk", b"t-1"]), st.binary(max_size=60),
       st.integers(0, 8))  # fmt: skip
def test_only_the_control_header_is_removed(lines: list[bytes], value: bytes, tail: bytes, at: int) -> None:
    plain = [ln for ln in lines if not ln.lower().startswith(b"x-fastmta-")]
    header = [ln + b"\r\n" for ln in plain]
    body_part = b"\r\n" + tail
    tags = extract(b"".join(header) + body_part)
    assert tags is None
    control = b"X-Fastmta-Pool: " + value + b"\r\n"
    with_it = header[:at] + [control] + header[at:]
    tags = extract(b"".join(with_it) + body_part)
    assert tags is not None
    assert tags.body == b"".join(header) + body_part
    assert tags.pool == value.decode() and tags.valid is bool(value)


def _data_end(cfg: FakeSettings, ip: str, body: bytes) -> tuple[bytes, S.Action | None]:
    s = S.Session(cfg, ip)
    for line in (b"EHLO c.test", b"MAIL FROM:<a@x.test>", b"RCPT TO:<b@in.test>", b"DATA"):
        run(s, line)
    act = s.data_end(body)
    out = b"".join(s.out)
    return out, act


def test_session_takes_them_from_a_relay_client_only() -> None:
    cfg = FakeSettings(policy=Policy(from_dict(POOLS)))
    body = b"X-Fastmta-Pool: bulk\r\nX-Fastmta-Tenant: t1\r\n\r\nhi\r\n"
    out, act = _data_end(cfg, "127.0.0.1", body)
    assert act is not None and act[0] == S.A_COMMIT
    txn, stored = act[2], act[4]
    assert (txn.pool, txn.tenant, stored) == ("bulk", "t1", b"\r\nhi\r\n")
    out, act = _data_end(cfg, "192.0.2.1", body)
    assert out == R.R_550_XHEADER_DENIED and act is None
    out, _ = _data_end(cfg, "127.0.0.1", b"X-Fastmta-Pool: nope\r\n\r\nhi\r\n")
    assert out == R.R_550_POOL_UNKNOWN
    out, _ = _data_end(cfg, "127.0.0.1", b"X-Fastmta-Tenant: a b\r\n\r\nhi\r\n")
    assert out == R.R_550_XHEADER_BAD
    assert cfg.rejections == ["xheader"] * 3
