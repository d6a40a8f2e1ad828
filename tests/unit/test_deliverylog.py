# SPDX-License-Identifier: MIT
"""The delivery log's timestamps and "received" lines."""

from __future__ import annotations

import io
import json
import time

from hypothesis import given
from hypothesis import strategies as st

from fastmta.deliverylog import DeliveryLog, iso_ts
from fastmta.spool import Envelope, Recipient


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))  # up to 2100
def test_iso_ts_is_utc_with_milliseconds(t: float) -> None:
    ms = int(t * 1000)
    want = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"
    assert iso_ts(t) == want


def test_iso_ts_across_a_second_boundary() -> None:
    assert iso_ts(1764361295.999) == "2025-11-28T20:21:35.999Z"
    assert iso_ts(1764361296.0) == "2025-11-28T20:21:36.000Z"
    assert iso_ts(1764361295.5) == "2025-11-28T20:21:35.500Z"  # back in time: reformatted


def test_received_lines_are_json_one_per_recipient() -> None:
    out = io.StringIO()
    dlog = DeliveryLog()
    dlog._out = out
    env = Envelope("ID1", 'a"b@x.test', [Recipient("r1@y.test"), Recipient("r2@y.test")],
                   client_ip="127.0.0.1", listener="mx")  # fmt: skip
    env.size = 42
    dlog.received([env])
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [ln["rcpt"] for ln in lines] == ["r1@y.test", "r2@y.test"]
    assert all(ln["event"] == "received" and ln["from"] == 'a"b@x.test' and ln["size"] == 42 for ln in lines)
    assert lines[0]["ts"].endswith("Z") and len(lines[0]["ts"]) == 24
