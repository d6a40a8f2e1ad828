# SPDX-License-Identifier: MIT
"""A tiny, bounded run of the benchmark harness so it cannot rot.

Every peer starts on loopback, takes a few real messages, and is stopped by its
own pid; then ``bench/run.py`` runs a minimal accept + relay matrix end to end
and must write its JSON, its chart and the report table.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bench import peers
from tests.support import ROOT, require_tool

pytestmark = pytest.mark.timeout(400)


def _send(address: str, n: int) -> None:
    r = subprocess.run([require_tool("smtp-source"), "-s", "2", "-m", str(n), "-l", "512", "-f", "a@src.test",
                        "-t", "b@dst.test", address], capture_output=True, timeout=30)  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()


def _gone(pids: list[int]) -> bool:
    return not any(Path(f"/proc/{p}").exists() and "Z" not in _state(p) for p in pids)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


STORED: dict[str, Callable[[peers.Peer], int | None]] = {
    "postfix": lambda p: p.queued(),  # type: ignore[attr-defined]
    "fastmta": lambda p: p.queued(),  # type: ignore[attr-defined]
    "aiosmtpd-durable": lambda p: len(list((p.workdir / "mail").iterdir())),
}


PYTHON_PEERS = {"limit", "limit-durable", "aiosmtpd-sink", "aiosmtpd-durable", "fastmta"}


@pytest.mark.parametrize(
    "make",
    [peers.Limit, peers.DurableLimit, lambda: peers.Aiosmtpd(durable=False),
     lambda: peers.Aiosmtpd(durable=True), peers.SmtpSink, lambda: peers.Postfix(hold=True),
     lambda: peers.Fastmta(hold=True)],
    ids=["limit", "limit-durable", "aiosmtpd-sink", "aiosmtpd-durable", "smtp-sink", "postfix", "fastmta"],
)  # fmt: skip
def test_peer_takes_mail_and_stops_by_its_pid(make: Callable[[], peers.Peer]) -> None:
    require_tool("postfix")
    peer = make().start()
    try:
        tree = peers.process_tree(peer.pid)
        _send(peer.address, 3)
        if peer.name in STORED:
            assert STORED[peer.name](peer) == 3
        if isinstance(peer, peers.SmtpSink):
            assert peer.wait_messages(3, 10) and peer.counts()[1] == 3  # (+1 session: the start-up probe)
        assert peer.rss() > 0
        # A Python interpreter's start alone costs more than one 10 ms tick; the C servers
        # may well not have used one yet (test_cpu_seconds_is_the_kernels_count checks the reader).
        assert peer.cpu() > 0.0 if peer.name in PYTHON_PEERS else peer.cpu() >= 0.0
        tree = peers.process_tree(peer.pid)
    finally:
        peer.stop()
    assert _gone(tree), f"{peer.name} left processes behind: {tree}"
    assert not peer.workdir.exists()


def _durable_limit_bodies(peer: peers.Peer) -> list[bytes]:
    import lmdb

    env = lmdb.open(str(peer.workdir / "lmdb"), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return [bytes(v) for _, v in txn.cursor()]
    finally:
        env.close()


def test_durable_limit_stores_each_body_whole_before_its_250() -> None:
    """The durability floor must really keep the mail: the bytes between the DATA line
    and the final dot, however the reads split them, committed before the 250."""
    import socket

    body = b"Subject: floor\r\n\r\n" + b"x" * 3000 + b"\r\n.\r\n"
    with peers.DurableLimit() as peer:
        host, port = peer.address.split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            f = s.makefile("rb")
            assert f.readline().startswith(b"220")
            for cut in (1, 2, 3, 7, len(body) - 4, len(body) - 2, len(body) - 1):  # the end in two reads
                s.sendall(b"MAIL FROM:<a@src.test>\r\nRCPT TO:<b@dst.test>\r\nDATA\r\n")
                for _ in range(3):
                    assert f.readline().startswith((b"250", b"354"))
                s.sendall(body[:cut])
                time.sleep(0.02)
                s.sendall(body[cut:])
                assert f.readline() == b"250 2.0.0 Ok: queued\r\n"
                assert _durable_limit_bodies(peer) == [body[:-3]], cut  # committed before the 250
            s.sendall(b"MAIL FROM:<a@src.test>\r\nRCPT TO:<b@dst.test>\r\nDATA\r\n")
            for _ in range(3):
                f.readline()
            s.sendall(b".\r\n")  # an empty body
            assert f.readline().startswith(b"250")
            assert _durable_limit_bodies(peer) == [b""]


# Burns CPU itself and in a child it waits for (reaped: cutime/cstime), then reports the
# kernel's own count through times(2), which shares nothing with the /proc parser.
_BURNER = """
import os, subprocess, sys, time
burn = "import time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.2: pass"
subprocess.run([sys.executable, "-c", burn], check=True)
t = time.process_time()
while time.process_time() - t < 0.2:
    pass
c = os.times()
print(c.user + c.system + c.children_user + c.children_system, flush=True)
time.sleep(30)
"""


def test_cpu_seconds_is_the_kernels_count() -> None:
    proc = subprocess.Popen([sys.executable, "-c", _BURNER], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        own = float(proc.stdout.readline())
        read = peers.cpu_seconds(proc.pid)
    finally:
        proc.kill()
        proc.wait(5)
    assert own >= 0.4
    assert abs(read - own) <= 0.03, (read, own)  # ticks of 10 ms, and the print after times()


def test_run_py_writes_json_chart_and_table(tmp_path: Path) -> None:
    accept = "--systems fastmta,postfix,limit --scenarios 4k-50c-1m --seconds 0.2"
    relay = "--systems fastmta,postfix --count 100 --drain 200"
    cmd = [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--only", "accept,relay,nope"]
    assert subprocess.run(cmd, capture_output=True, cwd=ROOT, timeout=30).returncode == 2
    cmd = [*cmd[:-1], "accept,relay", "--reps", "1", "--out", str(tmp_path), "--note", "smoke test",
           "--accept-args", accept, "--relay-args", relay]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env)
    try:
        out_b, err_b = proc.communicate(timeout=300)  # a safety net, generous for a loaded machine
    finally:
        if proc.poll() is None:
            proc.terminate()  # run.py stops its bench, which stops its peers by pid
            out_b, err_b = proc.communicate(timeout=60)
    assert proc.returncode == 0, err_b.decode()[-3000:]
    (result_file,) = tmp_path.glob("*.json")
    result = json.loads(result_file.read_text())
    assert result["machine"]["cores"] and result["machine"]["versions"]["postfix"].startswith("3.")
    acc = result["benches"]["accept"]
    assert acc["unavailable"] == {}
    assert acc["disk"]["commit_floor_us"] > 0 and acc["disk"]["samples"] == 200
    for sc in ("4k-50c-1m",):
        for drv in ("smtp-source", "fastmta-load"):
            cells = acc["summary"][sc][drv]
            assert set(cells) == {"fastmta", "postfix", "limit"}
            assert all(c["good_reps"] == 1 and c["rate"]["median"] > 0 for c in cells.values())
        assert set(acc["ratios"][sc]["smtp-source"]) == {"postfix", "limit"}
    assert acc["summary"]["4k-50c-1m"]["fastmta-load"]["fastmta"]["p99_ms"]["median"] > 0
    # Durable systems really hold what they acknowledged (warm-up + measured runs).
    sent = sum(r["ok"] for r in acc["runs"] if r["system"] == "postfix")
    assert acc["stored_check"]["postfix"] == sent
    assert acc["stored_check"]["fastmta"] == sum(r["ok"] for r in acc["runs"] if r["system"] == "fastmta")
    rel = result["benches"]["relay"]
    assert set(rel["summary"]["4k-50c-1m"]) == {"fastmta", "postfix"}
    assert all(r["complete"] and r["delivered"] == 100 for r in rel["runs"])
    for system in ("fastmta", "postfix"):
        drained = rel["drain"][system]
        assert drained["complete"] and drained["delivered"] == 200, drained
        assert drained["connections_opened"] >= 1 and drained["peak_pss_mb"] > 0
    assert (tmp_path / result_file.with_suffix(".png").name).read_bytes()[:4] == b"\x89PNG"
    out = out_b.decode()
    assert "fastmta ÷ postfix" in out and "End-to-end relay" in out and "Drain" in out and "smoke test" in out


def test_profile_charges_samples_to_areas() -> None:
    from bench import profile

    srv = 'process 10:"python -m fastmta serve"'
    writer = f'{srv};process 11:"python -c writer"'
    rx = f"{srv};main (fastmta/cli.py:1);data_received (fastmta/smtp/protocol.py:9)"
    raw = "\n".join([
        f"{rx};feed (fastmta/_parser.pyx:5) 4",
        f"{rx};write (libc.so.6) 3",
        f"{srv};_mail (fastmta/smtp/session.py:3);inc (prometheus_client/values.py:2) 2",
        f"{srv};uv_run (core.c:464);epoll_pwait (libc.so.6) 50",
        f"{srv};uv_run (core.c:464);uv__read (stream.c:1) 1",
        f"{writer};serve (fastmta/spool/writer.py:1);fdatasync (libc.so.6) 5",
        f"{writer};serve (fastmta/spool/writer.py:1);recv (libc.so.6) 7",
        f"{writer};serve (fastmta/spool/writer.py:1);epoll_wait (libc.so.6) 9",
        "garbage line",
    ])  # fmt: skip
    res = profile.analyse(raw, 10)
    assert res["samples"] == 10 and res["idle_samples"] == 50
    assert res["child_process_samples"] == 12  # its epoll wait is idle
    assert res["shares"] == {"parser": 0.4, "protocol": 0.3, "metrics+log": 0.2, "event loop+other": 0.1}
    assert res["syscall_share"] == 0.3
    assert res["top_leaves"][0] == ["feed (_parser.pyx)", 0.4]


def test_report_targets_ratios_and_stored_check() -> None:
    from bench import accept, report

    def cell(rate: float) -> dict[str, object]:
        return {"reps": 1, "good_reps": 1, "rate": {"median": rate, "min": rate, "max": rate},
                "mb_s": {"median": rate / 100, "min": rate / 100, "max": rate / 100}}  # fmt: skip

    summary = {
        "4k-50c-1m": {"smtp-source": {"fastmta": cell(5000), "postfix": cell(1000), "limit": cell(8000)}},
        "4k-50c-100m": {"smtp-source": {"fastmta": cell(3000), "postfix": cell(1000), "limit": cell(9000)}},
    }
    runs = [
        {"system": "fastmta", "ok": 7, "driver": "smtp-source"},
        {"system": "postfix", "ok": 5, "driver": "x"},
    ]
    acc = {"summary": summary, "ratios": accept.ratios(summary), "systems": ["fastmta", "postfix", "limit"],
           "scenarios": {k: k for k in summary}, "reps": 1, "runs": runs,
           "stored_check": {"fastmta": 7, "postfix": 4, "limit": None}}  # fmt: skip
    assert acc["ratios"]["4k-50c-1m"]["smtp-source"] == {"postfix": 5.0, "limit": 0.62}
    text = "\n".join(report.goal_lines({"accept": acc}) + report.stored_lines(acc))
    assert "| accept 4k-50c-1m: fastmta ≥ 4× postfix | 5.00× | – | yes |" in text
    assert "| accept 4k-50c-100m: fastmta ≥ 10× postfix | 3.00× | – | **no** |" in text
    assert "fastmta 7/7, postfix 4/5 **MISMATCH**" in text


def test_one_connection_floor_and_its_report_line() -> None:
    from bench import accept, report

    def cell(rate: float) -> dict[str, object]:
        return {"rate": {"median": rate, "min": rate, "max": rate}}

    summary = {
        "1c": {
            "smtp-source": {
                "fastmta": cell(1500),
                "postfix": cell(1000),
                "limit": cell(5000),
                "limit-durable": cell(1600),
            }
        },
        "50c": {"smtp-source": {"fastmta": cell(9000), "limit": cell(20000)}},
    }
    scenarios = [accept.Scenario("1c", 4096, 1, 100), accept.Scenario("50c", 4096, 50, 100)]
    floors = accept.floors(summary, scenarios, 300.0, 800.0)  # 200 µs of protocol + 300 of flushes: 2,000/s
    assert floors == {"1c": {"smtp-source": {
        "limit_us_per_msg": 200.0, "commit_floor_us": 300.0, "durable_ceiling_rate": 2000.0,
        "ceiling_over_postfix": 2.0, "fastmta_share_of_ceiling": 0.75, "durable_limit_share_of_ceiling": 0.8,
        "spool_commit_floor_us": 800.0, "spool_ceiling_rate": 1000.0, "fastmta_share_of_spool_ceiling": 1.5,
    }}}  # fmt: skip
    acc = {"scenarios": {"1c": "4 KiB, 1 conn"}, "floors": floors,
           "disk": {"commit_floor_us": 300.0, "data_page_fdatasync_us": 180.0, "meta_dsync_write_us": 120.0,
                    "samples": 200}}  # fmt: skip
    text = "\n".join(report.floor_lines(acc))
    assert "takes 300.0 µs (fdatasync 180.0 + O_DSYNC meta write 120.0, medians of 200)" in text
    assert "4 KiB, 1 conn, `smtp-source`: limit 200.0 µs/msg + floor → at most 2,000 msg/s" in text
    assert (
        "= 2.00× Postfix; fastmta reaches 75% of it, the durable limit 80%. With a commit shaped like" in text
    )
    assert "fastmta's spool (800.0 µs): at most 1,000 msg/s; fastmta reaches 150% of it." in text
    assert report.floor_lines({}) == []


def test_vs_limit_puts_fastmta_beside_both_limits() -> None:
    from bench import accept, report

    def cell(rate: float, cpu: float) -> dict[str, object]:
        return {"rate": {"median": rate, "min": rate, "max": rate},
                "cpu_us_per_msg": {"median": cpu, "min": cpu, "max": cpu}}  # fmt: skip

    summary = {"50c": {"smtp-source": {"fastmta": cell(3000, 300.0), "limit": cell(6000, 100.0),
                                       "limit-durable": cell(2000, 200.0)}}}  # fmt: skip
    row = accept.vs_limit(summary)["50c"]["smtp-source"]["fastmta"]
    assert row == {"cpu_us_per_msg": 300.0, "limit_cpu_us_per_msg": 100.0, "cpu_over_limit": 3.0,
                   "share_of_limit_rate": 0.5, "durable_limit_cpu_us_per_msg": 200.0,
                   "durable_limit_over_limit": 2.0, "cpu_over_durable_limit": 1.5,
                   "share_of_durable_limit_rate": 1.5}  # fmt: skip
    acc = {"summary": summary, "ratios": accept.ratios(summary), "reps": 1,
           "systems": ["fastmta", "limit", "limit-durable"], "scenarios": {"50c": "4 KiB, 50 conn"},
           "vs_limit": accept.vs_limit(summary)}  # fmt: skip
    text = "\n".join(report.accept_tables(acc))
    assert (
        "| 4 KiB, 50 conn | smtp-source | fastmta | 300.0 (100.0) | 3.0× | 0.5 | 200.0 | 2.0× | 1.5× | 1.5 |"
        in text
    )
    assert (
        "| 4 KiB, 50 conn | 3,000 (3,000–3,000) | 6,000 (6,000–6,000) | 2,000 (2,000–2,000) | 0.50× | 1.50× |"
        in text
    )


def test_core_targets_are_judged_against_the_floors_of_the_same_run() -> None:
    from bench import report

    acc = {
        "scenarios": {"4k-50c-1m": "4 KiB, 50 conn", "4k-1c-100m": "4 KiB, 1 conn"},
        "vs_limit": {"4k-50c-1m": {"smtp-source": {"fastmta": {"cpu_over_durable_limit": 1.6}}},
                     "4k-1c-100m": {"smtp-source": {"fastmta": {"cpu_over_durable_limit": 3.0}}}},
        "floors": {"4k-1c-100m": {"smtp-source": {"fastmta_share_of_spool_ceiling": 0.79}}},
    }  # fmt: skip
    text = "\n".join(report.core_goal_lines(acc))
    assert "| 4 KiB, 50 conn: CPU ≤ 1.6× the durable limit's | smtp-source | 1.60× | yes |" in text
    assert "| 4 KiB, 1 conn: ≥ 80% of the spool-shaped ceiling | smtp-source | 79% | **no** |" in text
    assert "3.00×" not in text  # one connection is judged against its ceiling, not by CPU
    assert report.core_goal_lines({"scenarios": {}}) == []


def test_disk_flush_probe_leaves_nothing_behind(tmp_path: Path) -> None:
    from bench import disk

    res = disk.flush_latency(str(tmp_path), samples=5)
    assert res["samples"] == 5 and res["data_page_fdatasync_us"] > 0 and res["meta_dsync_write_us"] > 0
    assert res["commit_floor_us"] == pytest.approx(
        res["data_page_fdatasync_us"] + res["meta_dsync_write_us"], abs=0.2
    )
    assert res["spool_commit_floor_us"] > 0
    both = disk.combine([res, dict(res, commit_floor_us=1.0, samples=7)])
    assert both["samples"] == 12 and both["probes"] == 2
    assert both["commit_floor_us"] == round((res["commit_floor_us"] + 1.0) / 2, 1)
    assert list(tmp_path.iterdir()) == []


def test_accept_run_sizes_and_order() -> None:
    from bench import accept

    sc = accept.Scenario("x", 4096, 50, 100)
    assert accept.plan_count(sc, 0, 0, 30_000) == 1000  # the floor: 10 rounds of 2 per connection
    assert accept.plan_count(accept.Scenario("y", 4096, 1, 1), 0, 0, 30_000) == 200  # never a handful
    assert accept.plan_count(sc, 4321, 1.0, 30_000) == 4300  # whole rounds of 50 connections
    assert accept.plan_count(sc, 1e6, 1.0, 30_000) == 30_000
    systems = ["a", "b", "c"]
    orders = [accept.order(systems, r) for r in range(3)]
    assert orders == [["a", "b", "c"], ["a", "c", "b"], ["c", "a", "b"]]
    assert {o[0] for o in orders} == {"a", "c"} and all(sorted(o) == systems for o in orders)


def test_a_peer_that_cannot_start_is_reported_and_cleaned_up() -> None:
    class Broken(peers.Peer):
        name = "broken"

        def command(self) -> list[str]:
            return [sys.executable, "-c", "import sys; print('no such listener'); sys.exit(3)"]

    peer = Broken()
    with pytest.raises(RuntimeError, match="exited with 3.*no such listener"):
        peer.start()
    assert not peer.workdir.exists()


def test_spool_bench_abandons_puts_that_outlive_the_window() -> None:
    from bench import spool

    async def run() -> dict[str, object]:
        calls = [0]
        never = asyncio.Event()

        async def put() -> None:  # the first two finish, then one hangs as a starved thread would
            calls[0] += 1
            if calls[0] > 2:
                await never.wait()

        return await spool.run_producers(put, 1, 0.2, 100, 0.0)

    t0 = time.monotonic()
    res = asyncio.run(run())
    assert time.monotonic() - t0 < 10
    assert res["puts"] == 2 and res["abandoned_in_flight"] == 1


def test_dkim_ceilings_from_openssl_speed() -> None:
    """bench/dkim.py's ceilings: real ``openssl speed`` figures, a made-up run's medians."""
    from bench import dkim, report

    speed = dkim.openssl_speed(seconds=1)
    assert speed["rsa"] > 10 and speed["ed25519"] > speed["rsa"]
    plain = {"rate_median": 1000.0, "rates": [1000.0], "cpu_us_per_msg_median": 1000.0,
             "client_cpu_us_per_msg_median": 150.0, "sink_cpu_us_per_msg_median": 100.0}  # fmt: skip
    postfix = {**plain, "rate_median": 150.0, "rates": [150.0]}
    fixed = {"rsa": 1e6 / 250, "ed25519": 1e6 / 50}  # 250 µs and 50 µs per signature
    ceil = dkim.ceilings({"fastmta": plain, "postfix-opendkim": postfix}, [fixed])
    assert ceil["fastmta / postfix-opendkim"] == 6.67  # below 8: the 8× target cannot be met
    assert ceil["plain_total_cpu_us_per_msg"] == 1250
    assert ceil["cpu budget fastmta-rsa / fastmta"] == round(1250 / 1500, 3)
    assert ceil["cpu budget fastmta-ed25519 / fastmta"] == round(1250 / 1300, 3)
    result = {"count_per_run": 10, "summary": {"fastmta": plain, "postfix-opendkim": postfix},
              "targets": {"fastmta-rsa / fastmta": 0.6, "fastmta-rsa / postfix-opendkim": 8.0},
              "ratios": {"fastmta-rsa / fastmta": 0.55, "fastmta-rsa / postfix-opendkim": 4.0},
              "ceilings": ceil, "load_average_1min": {"start": 1.0, "end": 1.0}}  # fmt: skip
    text = "\n".join(report.dkim_lines(result))
    assert "| fastmta-rsa / fastmta | ≥ 0.6 | 0.55 | 0.833 (CPU budget) | **not met** |" in text
    eight = "| ≥ 8 | 4 | 6.67 (fastmta ÷ postfix) | above this machine's ceiling |"
    assert f"| fastmta-rsa / postfix-opendkim {eight}" in text
