# SPDX-License-Identifier: MIT
"""The load generator's pure parts: percentiles, histograms, messages, bounds, splitting, reports."""

from __future__ import annotations

import email
import io
import json
from array import array

import pytest

from fastmta import loadgen
from fastmta.loadgen import client, runner
from fastmta.parser import encode_data


def test_percentile_nearest_rank() -> None:
    values = sorted(float(i) for i in range(1, 101))
    assert loadgen.percentile(values, 50) == 50.0
    assert loadgen.percentile(values, 99) == 99.0
    assert loadgen.percentile(values, 99.9) == 100.0
    assert loadgen.percentile(values, 100) == 100.0
    assert loadgen.percentile([7.0], 50) == 7.0
    assert loadgen.percentile([], 99) == 0.0


def test_latency_summary_is_in_milliseconds() -> None:
    s = loadgen.latency_summary([0.001] * 99 + [0.5])
    assert s["p50"] == 1.0 and s["p99"] == 1.0 and s["p99.9"] == 500.0 and s["max"] == 500.0
    assert s["n"] == 100
    assert loadgen.latency_summary([])["n"] == 0


def test_histogram_buckets_by_upper_edge() -> None:
    hist = loadgen.histogram([0.00005, 0.0001, 0.0003, 0.0015, 0.0015, 100.0])
    assert hist == [[0.1, 2], [0.5, 1], [2, 2], [float("inf"), 1]]
    assert sum(c for _, c in loadgen.histogram([0.001 * i for i in range(1000)])) == 1000


@pytest.mark.parametrize("size", [300, 4096, 102400, 1_000_000])
def test_make_message_has_the_size_and_parses(size: int) -> None:
    raw = loadgen.make_message(size, "a@b.test", "c@d.test")
    assert abs(len(raw) - size) <= 2
    assert raw.endswith(b"\r\n") and b"\n" not in raw.replace(b"\r\n", b"")
    msg = email.message_from_bytes(raw)
    assert msg["From"] == "<a@b.test>" and msg["To"] == "<c@d.test>" and msg["Message-ID"]


def test_payloads_are_dot_stuffed_with_the_parser_encoder() -> None:
    raw = b"Subject: x\r\n\r\n.leading dot\r\nplain\r\n"
    (payload,) = loadgen.payloads([raw])
    assert payload == encode_data(raw)
    assert b"\r\n..leading dot\r\n" in payload and payload.endswith(b"\r\n.\r\n")


def test_load_corpus_reads_eml_files_sorted(tmp_path) -> None:
    (tmp_path / "b.eml").write_bytes(b"Subject: b\r\n\r\nB\r\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.eml").write_bytes(b"Subject: a\r\n\r\nA\r\n")
    (tmp_path / "ignored.txt").write_bytes(b"nope")
    assert loadgen.load_corpus(tmp_path) == [b"Subject: b\r\n\r\nB\r\n", b"Subject: a\r\n\r\nA\r\n"]
    with pytest.raises(ValueError):
        loadgen.load_corpus(tmp_path / "sub" / "none")


def test_budget_count_bound() -> None:
    b = client._Budget(loadgen.LoadSpec(count=3), start=0.0)
    assert [b.take(0.0) for _ in range(4)] == [0.0, 0.0, 0.0, None]


def test_budget_duration_bound() -> None:
    b = client._Budget(loadgen.LoadSpec(count=None, duration=2.0), start=10.0)
    assert b.take(11.9) == 0.0
    assert b.take(12.0) is None


def test_budget_rate_spaces_messages() -> None:
    b = client._Budget(loadgen.LoadSpec(count=None, duration=100, rate=10.0), start=0.0)
    delays = [b.take(0.0) for _ in range(3)]
    assert delays == pytest.approx([0.0, 0.1, 0.2])
    # Falling behind schedule never builds up a burst larger than "now".
    assert b.take(5.0) == 0.0
    assert b.take(5.0) == pytest.approx(0.1)


def test_budget_rate_never_schedules_past_the_deadline() -> None:
    # 50/s for 1 s: the slots start at 0, 0.02, ..., 0.98 and no later, whatever asks.
    b = client._Budget(loadgen.LoadSpec(count=None, duration=1.0, rate=50.0), start=0.0)
    delays = []
    while (d := b.take(0.0)) is not None:
        delays.append(d)
    assert len(delays) == 50 and delays[-1] == pytest.approx(0.98)
    assert b.take(0.5) is None  # the schedule is used up, though the clock is not


def test_split_shares_connections_count_and_rate() -> None:
    spec = loadgen.LoadSpec(connections=5, count=11, rate=9.0)
    parts = runner._split(spec, 2)
    assert [p.connections for p in parts] == [3, 2]
    assert [p.count for p in parts] == [6, 5]
    assert [p.rate for p in parts] == [4.5, 4.5]
    assert [p.count for p in runner._split(loadgen.LoadSpec(count=None, duration=1), 2)] == [None, None]


def test_stats_merge_and_summary() -> None:
    a = loadgen.Stats(ok=2, bytes_ok=2000, connections=1, elapsed=1.0, txn=array("d", [0.001, 0.002]))
    a.errors["451"] += 1
    b = loadgen.Stats(ok=1, failed=1, bytes_ok=1000, connections=2, elapsed=2.0, txn=array("d", [0.003]))
    b.errors["451"] += 2
    a.merge(b)
    spec = loadgen.LoadSpec(connections=3, messages=(b"x" * 1000,))
    s = a.summary(spec)
    assert (s["ok"], s["failed"], s["sessions"], s["elapsed_s"]) == (3, 1, 3, 2.0)
    assert s["msgs_per_s"] == 1.5 and s["mb_per_s"] == 0.002
    assert s["latency_ms"]["txn"]["n"] == 3 and s["latency_ms"]["txn"]["max"] == 3.0
    assert s["errors"] == {"451": 3}
    assert s["size"] == 1000
    json.dumps(s)  # the --json output is plain JSON


def test_format_report_names_every_section() -> None:
    st = loadgen.Stats(ok=10, elapsed=1.0, txn=array("d", [0.001] * 10), connect=array("d", [0.0005]))
    st.errors["550"] = 2
    text = loadgen.format_report(st.summary(loadgen.LoadSpec()))
    for part in ("throughput 10.0 msg/s", "connect → banner", "end of DATA → 250", "MAIL → 250",
                 "histogram", "550 ×2"):  # fmt: skip
        assert part in text


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_progress_rewrites_one_line_on_a_tty() -> None:
    out = _Stream(tty=True)
    p = loadgen.Progress(total=100, duration=None, stream=out)
    p(40, 10, 1.0)
    p(90, 10, 2.0)
    p.finish()
    text = out.getvalue()
    assert text.count("\r") == 3 and "\n" not in text
    assert "50.0%" in text and "100.0%" in text and "45 msg/s" in text


def test_progress_prints_plain_lines_every_5s_without_a_tty() -> None:
    out = _Stream(tty=False)
    p = loadgen.Progress(total=None, duration=20.0, stream=out)
    for t in (0.5, 1.0, 5.5, 6.0, 10.6):  # lines at 5.5 s and 10.6 s
        p(int(t * 10), 0, t)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and all("\r" not in ln and "\x1b" not in ln for ln in lines)
