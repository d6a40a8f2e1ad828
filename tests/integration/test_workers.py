# SPDX-License-Identifier: MIT
"""``[server] workers = 2`` with real traffic: shards, queue commands, metrics, kill -9.

Each test runs a real supervisor (``fastmta serve``) whose workers share one
SO_REUSEPORT listener; the kernel spreads smtplib's connections over them.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.workers import Supervised, id_of, send_many
from tests.support import established, free_port, run_fastmta, wait_until

pytestmark = pytest.mark.timeout(180)


def shard_counts(spool: Path) -> dict[str, int]:
    """Messages per shard directory, read with the spool's own admin code."""
    from fastmta.config import SpoolConfig
    from fastmta.spool import admin, shards

    out = {}
    for index, sub in shards.present(SpoolConfig(path=str(spool))):
        store = admin.open_store(sub)
        try:
            out[str(index)] = admin.stats(store).messages
        finally:
            store.close()
    return out


def test_hold_both_shards_listed_then_released_exactly_once(
    workers_server: Callable[..., Supervised], sinks: Callable[..., object]
) -> None:
    """Hold: both shards take mail, ``queue`` lists both, /metrics counts both; SIGHUP without
    hold (forwarded to every worker) delivers every message exactly once."""
    sink_port = free_port("127.0.0.2")
    sink = sinks("127.0.0.2", sink_port)
    srv = workers_server(hold=True, nexthop=f"127.0.0.2:{sink_port}")
    acked = send_many(srv.port, 300)
    assert len(acked) == 300

    counts = shard_counts(srv.spool)
    assert set(counts) == {"0", "1"} and sum(counts.values()) == 300, counts
    assert min(counts.values()) > 0, counts  # the kernel spread the connections

    listed = run_fastmta("queue", "list", "--json", "--config", str(srv.config))
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.decode().splitlines()]
    assert len(rows) == 300 and len({r["id"] for r in rows}) == 300
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)  # one arrival-ordered list
    stats = json.loads(run_fastmta("queue", "stats", "--json", "--config", str(srv.config)).stdout)
    assert stats["messages"] == 300 and stats["recipients"]["pending"] == 300
    assert stats["shards"] == counts

    shown = run_fastmta("queue", "show", rows[-1]["id"], "--config", str(srv.config))
    assert shown.returncode == 0 and b"X-Test-Id" in shown.stdout

    # A scrape waits only 0.5 s for each worker's values: a loaded worker's may come a scrape later.
    wait_until(
        lambda: srv.metric("fastmta_messages_received_total") == 300, what="300 received over the workers"
    )
    assert srv.metric("fastmta_smtp_connections_total") >= 300
    assert srv.metric("fastmta_workers_ready") == 2
    assert srv.metric("fastmta_spool_size_bytes") > 0

    srv.config.write_text(srv.config.read_text().replace("hold = true", "hold = false"))
    srv.server.signal(signal.SIGHUP)
    sink.wait_messages(300, timeout=60)
    time.sleep(1.0)  # anything delivered twice would show up now
    delivered = collections.Counter(id_of(m.data) for m in sink.messages)
    assert set(delivered) == set(acked)
    assert max(delivered.values()) == 1
    wait_until(lambda: sum(shard_counts(srv.spool).values()) == 0, what="every shard emptied")
    wait_until(lambda: srv.metric('fastmta_deliveries_total{result="delivered"}') == 300,
               what="300 deliveries counted over the workers")  # fmt: skip
    assert srv.server.stderr().count("configuration reloaded") == 2  # one per worker


def test_kill_9_of_a_worker_loses_nothing_acknowledged(workers_server: Callable[..., Supervised],
                                                      sinks: Callable[..., object]) -> None:  # fmt: skip
    """kill -9 of worker 0 mid-load: the supervisor restarts it, the new worker recovers its
    shard, and every message that got 250 reaches the next hop (duplicates only for deliveries
    in flight at the kill)."""
    sink_port = free_port("127.0.0.3")
    sink = sinks("127.0.0.3", sink_port, delay=0.02)  # a slow next hop keeps a backlog in the shards
    srv = workers_server(nexthop=f"127.0.0.3:{sink_port}")
    victim = srv.worker_pids()[0]

    stop = threading.Event()
    result: list[str] = []
    load = threading.Thread(target=lambda: result.extend(send_many(srv.port, 400, threads=8, stop=stop)))
    load.start()
    wait_until(lambda: srv.metric("fastmta_messages_received_total") >= 120 or not load.is_alive(),
               what="120 messages in before the kill")  # fmt: skip
    os.kill(victim, signal.SIGKILL)
    load.join(120)
    assert not load.is_alive()
    acked = set(result)
    assert len(acked) > 200  # most of the load got through (the other worker kept serving)

    # The load may end before the supervisor has noticed the death: wait for the new worker.
    wait_until(lambda: srv.worker_pids()[0] != victim, what="worker 0 restarted")
    srv.wait_healthy()
    assert "worker 0 exited (killed by SIGKILL)" in srv.server.stderr()
    recovered = re.findall(r"spool at \S+/0 \((\d+) queued", srv.server.stderr())
    assert len(recovered) == 2 and int(recovered[1]) > 0, recovered  # the new worker had work to recover

    wait_until(
        lambda: acked <= {id_of(m.data) for m in sink.messages}, 90, "every acknowledged message relayed"
    )
    delivered = collections.Counter(id_of(m.data) for m in sink.messages)
    assert acked <= set(delivered), f"lost: {sorted(acked - set(delivered))[:10]}"
    # at-least-once: a second copy only of what the dead worker had in flight (≤ its 10 connections)
    assert sum(n - 1 for n in delivered.values()) <= 10, delivered.most_common(3)
    assert srv.metric("fastmta_worker_restarts_total") == 1


def test_sigterm_stops_every_process(workers_server: Callable[..., Supervised]) -> None:
    srv = workers_server(hold=True)
    pids = list(srv.worker_pids().values())
    assert len(pids) == 2
    assert len(send_many(srv.port, 10, threads=2)) == 10
    assert srv.server.stop() == 0
    for pid in pids:
        assert not _alive(pid)
    assert sum(shard_counts(srv.spool).values()) == 10  # durable across the stop
    assert "supervisor: stopped" in srv.server.err_path.read_text()


def test_workers_stop_when_the_supervisor_is_killed(workers_server: Callable[..., Supervised]) -> None:
    """Workers hold a lifeline to the supervisor: its death (even SIGKILL) stops them cleanly."""
    srv = workers_server(hold=True)
    pids = list(srv.worker_pids().values())
    srv.server.kill9()
    wait_until(lambda: not any(_alive(p) for p in pids), what="every worker gone")


def test_a_worker_that_cannot_start_stops_the_start(make_config: Callable[..., Path], tmp_path: Path) -> None:
    """A pool source address this host does not have (the start-up checks before the workers
    cannot see it; each worker binds it): the start stops with the worker's exit status."""
    from tests.fixtures.workers import workers_toml

    pool = '[[pool]]\nname = "bulk"\nsources = [{ address = "192.0.2.1", ehlo = "m.test" }]\n'
    cfg = make_config(workers_toml(free_port(), free_port(), hold=True, extra=pool))
    r = run_fastmta("serve", "--config", str(cfg), timeout=60)
    assert r.returncode == 2, r.stderr
    assert b"failed to start" in r.stderr and b"192.0.2.1" in r.stderr, r.stderr


def test_metrics_address_in_use_fails_the_start(make_config: Callable[..., Path]) -> None:
    import socket

    from tests.fixtures.workers import workers_toml

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = make_config(workers_toml(free_port(), port, hold=True))
        r = run_fastmta("serve", "--config", str(cfg), timeout=60)
    assert r.returncode == 2 and f"metrics: 127.0.0.1:{port} is already in use".encode() in r.stderr, r.stderr


def test_sendmail_writes_into_a_shard_the_queue_sees(workers_server: Callable[..., Supervised]) -> None:
    srv = workers_server(hold=True)
    r = run_fastmta("sendmail", "--config", str(srv.config), "-f", "cron@src.test", "root@dst.test",
                    input=b"Subject: from cron\n\nhello\n")  # fmt: skip
    assert r.returncode == 0, r.stderr
    listed = run_fastmta("queue", "list", "--json", "--config", str(srv.config))
    rows = [json.loads(x) for x in listed.stdout.splitlines()]
    assert [r["from"] for r in rows] == ["cron@src.test"]
    deleted = run_fastmta("queue", "delete", rows[0]["id"], "--config", str(srv.config))
    assert deleted.returncode == 0, deleted.stderr
    assert sum(shard_counts(srv.spool).values()) == 0


def test_changing_workers_keeps_queued_mail(workers_server: Callable[..., Supervised]) -> None:
    """2 workers → 1 → 3: mail queued in shards nobody serves any more is moved, never stranded."""
    srv = workers_server(workers=2, hold=True)
    port, metrics_port = srv.port, srv.metrics_port
    assert len(send_many(port, 40)) == 40
    srv.server.stop()
    srv1 = workers_server(workers=1, hold=True, port=port, metrics_port=metrics_port)
    assert shard_counts(srv1.spool) == {"None": 40, "0": 0, "1": 0}
    srv1.server.stop()
    srv3 = workers_server(workers=3, hold=True, port=port, metrics_port=metrics_port)
    counts = shard_counts(srv3.spool)
    assert counts["0"] == 40 and sum(counts.values()) == 40, counts
    stats = json.loads(run_fastmta("queue", "stats", "--json", "--config", str(srv3.config)).stdout)
    assert stats["messages"] == 40 and stats["shards"] == {".": 0, "0": 40, "1": 0, "2": 0}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_delivery_log_through_a_pipe_stays_whole_lines(make_config: Callable[..., Path]) -> None:
    """stdout a pipe (journald, Docker): the supervisor relays the workers' JSON lines unbroken."""
    import subprocess

    from tests.fixtures.workers import workers_toml
    from tests.support import fastmta_cmd, wait_port

    port, metrics_port = free_port(), free_port()
    cfg = make_config(workers_toml(port, metrics_port, hold=True))
    proc = subprocess.Popen(fastmta_cmd("serve", "--config", str(cfg)), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stdout.read(4096), b"")))  # type: ignore[union-attr]
    reader.start()
    try:
        wait_port("127.0.0.1", port, proc=proc)  # type: ignore[arg-type]
        wait_until(lambda: _health(metrics_port) == 200, what="both workers up")
        assert len(send_many(port, 200, rcpt="x" * 60 + "@dst.test")) == 200
    finally:
        proc.terminate()
        proc.wait(30)
        reader.join(10)
    lines = b"".join(chunks).splitlines()
    events = [json.loads(line) for line in lines]  # a torn line would not parse
    assert len(events) == 200 and {e["event"] for e in events} == {"received"}


def _health(metrics_port: int) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


def test_per_destination_connections_are_shared_not_multiplied(
    workers_server: Callable[..., Supervised], sinks: Callable[..., object]
) -> None:
    """max_connections_per_destination = 2 over 2 workers: never more than 2 connections to the
    next hop in total (each worker gets ceil(2 / 2) = 1), while both workers deliver."""
    sink_port = free_port("127.0.0.4")
    sink = sinks("127.0.0.4", sink_port, delay=0.01)
    extra = "max_connections_per_destination = 2\n"
    srv = workers_server(hold=True, nexthop=f"127.0.0.4:{sink_port}")
    srv.config.write_text(srv.config.read_text().replace('tls = "none"\n', 'tls = "none"\n' + extra, 1))
    assert len(send_many(srv.port, 120)) == 120
    assert min(shard_counts(srv.spool).values()) > 0
    srv.config.write_text(srv.config.read_text().replace("hold = true", "hold = false"))
    srv.server.signal(signal.SIGHUP)
    peak = 0
    deadline = time.monotonic() + 60
    while len(sink.messages) < 120 and time.monotonic() < deadline:
        peak = max(peak, established(sink_port))
        time.sleep(0.005)
    assert len(sink.messages) == 120
    assert peak == 2, peak  # one per worker, both busy


def test_per_ip_connections_are_shared(workers_server: Callable[..., Supervised]) -> None:
    """max_connections_per_ip = 2 over 2 workers: one each, so a third connection is refused."""
    import socket

    srv = workers_server(hold=True, extra="\n[limits]\nmax_connections_per_ip = 2\n")
    conns = [socket.create_connection(("127.0.0.1", srv.port), timeout=30) for _ in range(3)]
    try:
        banners = [c.recv(512) for c in conns]
    finally:
        for c in conns:
            c.close()
    assert sum(b.startswith(b"220 ") for b in banners) <= 2
    assert any(b.startswith(b"421 4.7.0") for b in banners), banners


def test_queue_commands_act_on_every_shard(workers_server: Callable[..., Supervised]) -> None:
    """flush, bounce and delete find each id in whichever shard holds it."""
    from fastmta.config import SpoolConfig
    from fastmta.spool import admin, shards

    srv = workers_server(hold=True)
    assert len(send_many(srv.port, 30)) == 30
    spool = SpoolConfig(path=str(srv.spool))
    one_each = []
    for _, sub in shards.present(spool):
        store = admin.open_store(sub)
        try:
            one_each.append(next(admin.iter_envelopes(store)).id)
        finally:
            store.close()
    assert len(one_each) == 2
    cfg = str(srv.config)
    r = run_fastmta("queue", "flush", "--domain", "dst.test", "--config", cfg)
    assert r.returncode == 0 and b"flushed 30 messages" in r.stderr, r.stderr
    r = run_fastmta("queue", "flush", *one_each, "--config", cfg)
    assert r.returncode == 0 and b"flushed 2 messages" in r.stderr, r.stderr
    r = run_fastmta("queue", "bounce", *one_each, "--config", cfg)
    assert r.returncode == 0 and b"bounce requested for 2 messages" in r.stderr, r.stderr
    r = run_fastmta("queue", "delete", *one_each, "0000000000000000", "--config", cfg)
    assert r.returncode == 1 and b"deleted 2 messages" in r.stderr and b"0000000000000000: not in" in r.stderr
    assert sum(shard_counts(srv.spool).values()) == 28


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_whole_process_group_stops_cleanly(
    make_config: Callable[..., Path], sig: int
) -> None:
    """systemd (KillMode=control-group) and Ctrl-C signal every process: spool writers must
    outlive their workers' last commits, and nothing is left running."""
    import subprocess

    from tests.fixtures.workers import workers_toml
    from tests.support import fastmta_cmd

    port, metrics_port = free_port(), free_port()
    cfg = make_config(workers_toml(port, metrics_port, hold=True))
    err = cfg.with_suffix(".stderr")
    with open(err, "wb") as errf:
        proc = subprocess.Popen(fastmta_cmd("serve", "--config", str(cfg)), stdout=subprocess.DEVNULL,
                                stderr=errf, start_new_session=True)  # fmt: skip
        try:
            wait_until(lambda: _health(metrics_port) == 200, what="both workers up")
            assert len(send_many(port, 20, threads=2)) == 20
            os.killpg(proc.pid, sig)
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
    text = err.read_text()
    assert "Traceback" not in text and "spool writer process exited" not in text, text
    assert "supervisor: stopped" in text
    assert sum(shard_counts(cfg.parent / "spool").values()) == 20
    with pytest.raises(ProcessLookupError):  # nobody of the group is left
        os.killpg(proc.pid, 0)


def test_ipv6_listener_and_no_metrics_exporter(make_config: Callable[..., Path]) -> None:
    """Two workers share an [::1] listener too; with [metrics] address = "" nothing is exported."""
    import smtplib

    from tests.support import ServerProcess

    port = free_port("::1")
    cfg = make_config(
        f'[server]\nworkers = 2\n\n[[listener]]\naddress = "[::1]:{port}"\n\n[delivery]\nhold = true\n'
    )
    srv = ServerProcess(cfg, ("::1", port))
    try:
        wait_until(lambda: srv.stderr().count(" ready (pid ") >= 2, what="both workers ready")
        for i in range(10):
            with smtplib.SMTP("::1", port, timeout=30) as c:
                c.sendmail("a@src.test", ["b@dst.test"], f"Subject: v6 {i}\r\n\r\nhi\r\n".encode())
        assert srv.stop() == 0
    finally:
        srv.stop()
    assert "metrics of every worker" not in srv.err_path.read_text()
    assert sum(shard_counts(cfg.parent / "spool").values()) == 10


def test_live_relay_delivers_each_message_exactly_once(
    workers_server: Callable[..., Supervised], sinks: Callable[..., object]
) -> None:
    """No hold, no crash: 300 messages accepted by both workers are relayed once each."""
    sink_port = free_port("127.0.0.5")
    sink = sinks("127.0.0.5", sink_port)
    srv = workers_server(nexthop=f"127.0.0.5:{sink_port}")
    acked = send_many(srv.port, 300, tag="live")
    assert len(acked) == 300
    sink.wait_messages(300, timeout=60)
    time.sleep(1.0)  # a duplicate would arrive now
    delivered = collections.Counter(id_of(m.data) for m in sink.messages)
    assert set(delivered) == set(acked) and max(delivered.values()) == 1
    # Counters reach a scrape at most a second late and "delivered" lines follow the next
    # hop's 250: wait for them, then require the exact totals.
    wait_until(lambda: srv.metric("fastmta_messages_received_total") == 300, what="300 received counted")
    wait_until(lambda: srv.metric('fastmta_deliveries_total{result="delivered"}') >= 300,
               what="300 deliveries counted")  # fmt: skip
    assert srv.metric('fastmta_deliveries_total{result="delivered"}') == 300

    def events() -> collections.Counter[str]:
        return collections.Counter(
            json.loads(line)["event"] for line in srv.server.log_lines() if line.startswith("{")
        )

    wait_until(lambda: events()["delivered"] >= 300, what="300 delivered log lines")
    assert events() == {"received": 300, "delivered": 300}
