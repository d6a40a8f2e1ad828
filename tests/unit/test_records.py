# SPDX-License-Identifier: MIT
"""Envelope records: round trips, damage detection, ids."""

from __future__ import annotations

import contextlib
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastmta.spool import ids, records
from fastmta.spool.records import Envelope, Recipient, RecordError

text = st.text(max_size=60)
recipient = st.builds(
    Recipient, addr=text, state=st.sampled_from(records.STATES), orcpt=text, notify=text,
    last_error=st.text(max_size=records.MAX_ERROR), attempts=st.integers(0, 65535),
)  # fmt: skip
envelope = st.builds(
    Envelope, id=st.just("8DxmqQ7yK0Zr3aBc"), sender=text, rcpts=st.lists(recipient, max_size=20),
    arrived=st.floats(0, 2e9), size=st.integers(0, 2**40), attempts=st.integers(0, 2**31),
    next_attempt=st.floats(0, 2e9), last_error=st.text(max_size=records.MAX_ERROR), client_ip=text,
    helo=text, listener=text,
    params=st.dictionaries(st.sampled_from(["BODY", "SMTPUTF8", "RET", "ENVID"]),
                           st.text("abcXYZ=+", max_size=20)),
    pool=st.text(max_size=20), tenant=text,
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(envelope)
def test_round_trip(env: Envelope) -> None:
    data = records.encode(env)
    assert records.check(data)
    assert records.decode(env.id, data) == env
    assert records.next_attempt_of(data) == env.next_attempt


def test_records_keep_their_bytes() -> None:
    """Records outlive the code that wrote them: the encoding of these two envelopes
    (one plain, one with every field, non-ASCII text and a lone surrogate) is fixed."""
    full = Envelope("0123456789ABCDEF", "a@b.example",
                    [Recipient("x@y.example", orcpt="rfc822;x@y.example", notify="NEVER"),
                     Recipient("\u00fc@d\u00e9.example", state="failed", last_error="550 no", attempts=3)],
                    arrived=1.5, size=4096, attempts=2, next_attempt=7.25, last_error="451 later",
                    client_ip="127.0.0.1", helo="h\udcff", listener="bench",
                    params={"BODY": "8BITMIME", "SMTPUTF8": ""}, pool="p1", tenant="t\u00e9")  # fmt: skip
    plain = Envelope("0123456789ABCDEF", "a@b.example", [Recipient("x@y.example")], arrived=1.0,
                     next_attempt=1.0, client_ip="127.0.0.1", helo="h", listener="bench")  # fmt: skip
    assert records.encode(full).hex() == (
        "01f508c1ae000000000000f83f0010000000000000020000000000000000001d4002000000000203000b00"
        "090009000200050017000b001200050000000e000000000006006140622e6578616d706c65343531206c61"
        "7465723132372e302e302e3168ff62656e6368424f44593d384249544d494d4500534d5450555446383d78"
        "40792e6578616d706c657266633832323b7840792e6578616d706c654e45564552c3bc4064c3a92e657861"
        "6d706c65353530206e6f02000300703174c3a9"
    )
    assert records.encode(plain).hex() == (
        "0177ab3c06000000000000f03f000000000000000000000000000000000000f03f01000000000b000000090001"
        "00050000000b000000000000006140622e6578616d706c653132372e302e302e316862656e63687840792e65"
        "78616d706c65"
    )


def test_compact() -> None:
    env = Envelope("8DxmqQ7yK0Zr3aBc", "alice@src.test", [Recipient("bob@dst.test")], time.time(), 4096)
    assert len(records.encode(env)) < 100


def test_non_utf8_survives() -> None:
    env = Envelope("8DxmqQ7yK0Zr3aBc", "b\udcffad@src.test", [Recipient("r\udce9@dst.test")])
    assert records.decode(env.id, records.encode(env)) == env


@pytest.mark.parametrize("damage", ["truncate", "flip", "version", "empty"])
def test_damage_is_detected(damage: str) -> None:
    data = bytearray(records.encode(Envelope("8DxmqQ7yK0Zr3aBc", "a@src.test", [Recipient("b@dst.test")])))
    if damage == "truncate":
        data = data[:-3]
    elif damage == "flip":
        data[20] ^= 0x40
    elif damage == "version":
        data[0] = 99
    else:
        data = bytearray()
    assert not records.check(bytes(data))
    with pytest.raises(RecordError):
        records.decode("8DxmqQ7yK0Zr3aBc", bytes(data))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_never_raises_anything_but_record_error(data: bytes) -> None:
    with contextlib.suppress(RecordError):
        records.decode("8DxmqQ7yK0Zr3aBc", data)


def test_overlong_fields_are_capped() -> None:
    env = Envelope("8DxmqQ7yK0Zr3aBc", "a@src.test", [Recipient("b@dst.test", last_error="x" * 5000)],
                   last_error="y" * 5000)  # fmt: skip
    back = records.decode(env.id, records.encode(env))
    assert back.last_error == "y" * records.MAX_ERROR and back.rcpts[0].last_error == "x" * records.MAX_ERROR


def test_ids_unique_sortable_and_safe() -> None:
    made = [ids.new_id() for _ in range(20000)]
    assert len(set(made)) == len(made) and made == sorted(made)  # strictly increasing here
    assert all(ids.is_valid(i) for i in made)
    t0 = time.time()
    later = ids.new_id()
    assert later[:9] >= made[-1][:9] and abs(ids.id_time(later) - t0) < 5
    assert not ids.is_valid("../etc/passwd...") and not ids.is_valid("short")


@given(st.integers(0, 62**9 - 1), st.integers(0, 2**48 - 1), st.integers(0, 62**9 - 1))
def test_id_is_the_time_then_the_random_part_in_base_62(t: int, rand: int, earlier: int) -> None:
    """Whatever the kept digits of the previous id: nine time digits, then seven of the random bits."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ids.time, "time_ns", lambda: t * 1000)
        mp.setattr(ids, "_rand", lambda bits: rand)
        mp.setattr(ids, "_last", -1)
        mp.setattr(ids, "_high", earlier // 62**3)
        mp.setattr(ids, "_high_digits", ids.digits(earlier // 62**3, 6))
        made = ids.new_id()
    assert made == ids.digits(t * 62**7 + rand % 62**7, 16)
    assert ids.id_time(made) == t / 1e6


def test_records_from_before_pools_and_tenants_still_load() -> None:
    """A record without the trailing pool/tenant block (written by an older fastmta) loads with
    both empty; an older reader ignores the block (it decodes the fields it knows and stops)."""
    env = Envelope("8DxmqQ7yK0Zr3aBc", "a@src.test", [Recipient("b@dst.test")], 1.0, 10)
    old = records.encode(env)
    env.pool, env.tenant = "bulk", "shop1"
    new = records.encode(env)
    assert len(new) == len(old) + 4 + len("bulk") + len("shop1")
    assert (records.decode(env.id, old).pool, records.decode(env.id, old).tenant) == ("", "")
    assert (records.decode(env.id, new).pool, records.decode(env.id, new).tenant) == ("bulk", "shop1")
    assert new[5 : len(old)] == old[5:]  # after the CRC header: the same fields, then the block
