# SPDX-License-Identifier: MIT
"""A tiny, bounded run of the benchmark harness so it cannot rot.

Every peer starts on loopback, takes a few real messages, and is stopped by its
own pid; then ``bench/run.py`` runs a minimal accept + relay matrix end to end
and must write its JSON, its chart and the report table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bench import peers
from tests.support import ROOT, require_tool

pytestmark = pytest.mark.timeout(180)


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


@pytest.mark.parametrize(
    "make",
    [peers.Limit, lambda: peers.Aiosmtpd(durable=False), lambda: peers.Aiosmtpd(durable=True), peers.SmtpSink,
     lambda: peers.Postfix(hold=True), lambda: peers.Fastmta(hold=True)],
    ids=["limit", "aiosmtpd-sink", "aiosmtpd-durable", "smtp-sink", "postfix", "fastmta"],
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
        assert peer.cpu() >= 0.0 and peer.rss() > 0  # readable from /proc (10 ms CPU ticks)
        tree = peers.process_tree(peer.pid)
    finally:
        peer.stop()
    assert _gone(tree), f"{peer.name} left processes behind: {tree}"
    assert not peer.workdir.exists()


def test_run_py_writes_json_chart_and_table(tmp_path: Path) -> None:
    accept = "--systems fastmta,postfix,limit --scenarios 4k-50c-1m,4k-1c-100m --seconds 0.2"
    relay = "--systems fastmta,postfix --count 100 --drain 200"
    cmd = [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--only", "accept,relay,nope"]
    assert subprocess.run(cmd, capture_output=True, cwd=ROOT, timeout=30).returncode == 2
    cmd = [*cmd[:-1], "accept,relay", "--reps", "1", "--out", str(tmp_path), "--note", "smoke test",
           "--accept-args", accept, "--relay-args", relay]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env)
    try:
        out_b, err_b = proc.communicate(timeout=160)
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
    for sc in ("4k-50c-1m", "4k-1c-100m"):
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
    assert rel["drain"]["complete"] and rel["drain"]["delivered"] == 200
    assert rel["drain"]["connections_opened"] >= 1
    assert (tmp_path / result_file.with_suffix(".png").name).read_bytes()[:4] == b"\x89PNG"
    out = out_b.decode()
    assert "fastmta ÷ postfix" in out and "End-to-end relay" in out and "Drain" in out and "smoke test" in out
