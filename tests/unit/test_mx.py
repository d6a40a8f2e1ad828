# SPDX-License-Identifier: MIT
"""Pure parts of MX handling: ordering and address literals."""

from __future__ import annotations

import random

from fastmta.delivery.mx import Host, literal, order_mx


def test_order_by_preference_then_shuffled() -> None:
    records = ("20 b.test.", "10 a1.test.", "10 a2.test.", "30 c.test.", "bogus")
    seen = set()
    for seed in range(30):
        out = order_mx(records, random.Random(seed))
        assert [p for p, _ in out] == [10, 10, 20, 30]
        assert out[2:] == [(20, "b.test"), (30, "c.test")]
        seen.add(out[0][1])
    assert seen == {"a1.test", "a2.test"}


def test_null_mx_target_is_kept_for_the_caller() -> None:
    assert order_mx(("0 .",)) == [(0, "")]


def test_literals() -> None:
    assert literal("[192.0.2.1]") == "192.0.2.1"
    assert literal("[IPv6:2001:db8::1]") == "2001:db8::1"
    assert literal("127.0.0.1") == "127.0.0.1"
    assert literal("mx.a.test") is None
    assert literal("[not-an-ip]") is None


def test_host_text_is_the_log_form() -> None:
    assert str(Host("mx1.a.test", "127.0.0.2", 2525)) == "mx1.a.test[127.0.0.2]:2525"
