# SPDX-License-Identifier: MIT
"""``fastmta load`` against real servers: aiosmtpd sinks, Postfix's smtp-sink, raw sockets."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fastmta import loadgen
from tests.support import ROOT, fastmta_cmd, free_port, run_fastmta, wait_until

pytestmark = pytest.mark.timeout(60)
HOST = "127.0.0.1"


def spec(port: int, **kw: Any) -> loadgen.LoadSpec:
    raw = kw.pop("raw", [loadgen.make_message(kw.pop("size", 2048))])
    return loadgen.LoadSpec(host=HOST, port=port, messages=loadgen.payloads(raw), timeout=30.0, **kw)


def test_every_message_arrives_whole_with_every_recipient(sinks: Callable[..., Any]) -> None:
    port = free_port()
    sink = sinks(HOST, port)
    raw = loadgen.make_message(3000, "from@load.test", "a@sink.test")
    stats = loadgen.run(spec(port, raw=[raw], connections=3, per_connection=5, count=20,
                             sender="from@load.test", recipients=("a@sink.test", "b@sink.test")))  # fmt: skip
    assert (stats.ok, stats.failed, dict(stats.errors)) == (20, 0, {})
    msgs = sink.wait_messages(20)
    assert all(m.rcpt_tos == ["a@sink.test", "b@sink.test"] and m.mail_from == "from@load.test" for m in msgs)
    assert all(m.data.rstrip(b"\r\n") == raw.rstrip(b"\r\n") for m in msgs)
    # 5 messages per connection at most: at least 4 sessions, and the sink saw each one.
    assert stats.connections == sink.connections >= 4
    assert len(stats.txn) == len(stats.data) == 20 and len(stats.connect) == stats.connections
    assert stats.bytes_ok == 20 * len(loadgen.payloads([raw])[0])


def test_corpus_messages_are_sent_in_turn_dot_stuffed(sinks: Callable[..., Any]) -> None:
    port = free_port()
    sink = sinks(HOST, port)
    corpus = [
        b"Subject: one\r\n\r\n.starts with a dot\r\n",
        b"Subject: two\r\n\r\nline\n",
        b"Subject: 3\r\n\r\n..\r\n",
    ]
    stats = loadgen.run(spec(port, raw=corpus, count=6, connections=1, per_connection=6))
    assert stats.ok == 6
    got = [m.data.replace(b"\r\n", b"\n").rstrip(b"\n") for m in sink.wait_messages(6)]
    want = [m.replace(b"\r\n", b"\n").rstrip(b"\n") for m in corpus] * 2
    assert got == want


class StrictPipeliningServer:
    """Raw-socket SMTP server that answers MAIL/RCPT/DATA only once all three have arrived.

    A client that waits for each reply deadlocks here; a pipelining one does not.
    """

    def __init__(self) -> None:
        self.sock = socket.create_server((HOST, 0))
        self.port = self.sock.getsockname()[1]
        self.groups: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        f = conn.makefile("rb")
        conn.sendall(b"220 strict.test ESMTP\r\n")
        pending: list[bytes] = []
        while line := f.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                conn.sendall(b"250-strict.test\r\n250 PIPELINING\r\n")
            elif verb in (b"MAIL", b"RCPT"):
                pending.append(verb)
            elif verb == b"DATA":
                self.groups.append(b" ".join([*pending, verb]))
                conn.sendall(b"250 2.1.0 ok\r\n" + b"250 2.1.5 ok\r\n" * (len(pending) - 1) + b"354 go\r\n")
                pending = []
                while f.readline() != b".\r\n":
                    pass
                conn.sendall(b"250 2.0.0 queued\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"221 2.0.0 bye\r\n")
                break
        conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def strict_server() -> Iterator[StrictPipeliningServer]:
    server = StrictPipeliningServer()
    yield server
    server.close()


def test_pipelining_sends_mail_rcpt_data_in_one_group(strict_server: StrictPipeliningServer) -> None:
    stats = loadgen.run(spec(strict_server.port, count=6, connections=2, per_connection=3, pipelining=True,
                             recipients=("a@x.test", "b@x.test")))  # fmt: skip
    assert (stats.ok, stats.failed) == (6, 0)
    assert strict_server.groups == [b"MAIL RCPT RCPT DATA"] * 6


def test_without_pipelining_the_strict_server_times_out(strict_server: StrictPipeliningServer) -> None:
    stats = loadgen.run(replace(spec(strict_server.port, count=1), timeout=1.0))
    assert stats.ok == 0 and stats.failed == 1
    assert stats.errors["timeout"] == 1


def test_rset_between_messages_on_one_connection(sinks: Callable[..., Any]) -> None:
    port = free_port()
    sink = sinks(HOST, port)
    stats = loadgen.run(spec(port, count=3, connections=1, per_connection=3, rset=True))
    assert stats.ok == 3
    verbs = [c.split()[0] for c in sink.commands]
    assert verbs == ["EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT",
                     "DATA", "QUIT"]  # fmt: skip


@pytest.mark.parametrize("pipelining", [False, True])
def test_errors_are_counted_by_reply_code(sinks: Callable[..., Any], pipelining: bool) -> None:
    port = free_port()
    sinks(HOST, port, rcpt={"bad@x.test": "550 5.1.1 No such user"})
    stats = loadgen.run(spec(port, count=4, connections=1, per_connection=4, pipelining=pipelining,
                             recipients=("bad@x.test",)))  # fmt: skip
    assert (stats.ok, stats.failed) == (0, 4)
    assert stats.errors["rcpt:550"] == 4 and stats.errors["no-rcpt"] == 4


def test_a_temporary_failure_after_data_is_an_error_code(sinks: Callable[..., Any]) -> None:
    port = free_port()
    sinks(HOST, port, data="451 4.3.0 Try again later")
    stats = loadgen.run(spec(port, count=5, connections=2, per_connection=5))
    assert (stats.ok, stats.failed, dict(stats.errors)) == (0, 5, {"451": 5})
    assert len(stats.txn) == 0  # only accepted messages feed the latency figures


def test_some_recipients_refused_still_sends_the_message(sinks: Callable[..., Any]) -> None:
    port = free_port()
    sink = sinks(HOST, port, rcpt={"bad@x.test": "550 5.1.1 No such user"})
    stats = loadgen.run(
        spec(port, count=2, connections=1, per_connection=2, recipients=("bad@x.test", "ok@x.test"))
    )
    assert stats.ok == 2 and stats.errors["rcpt:550"] == 2
    assert [m.rcpt_tos for m in sink.wait_messages(2)] == [["ok@x.test"], ["ok@x.test"]]


def test_a_server_hanging_up_mid_transaction_ends_the_run(sinks: Callable[..., Any]) -> None:
    port = free_port()
    sinks(HOST, port, drop="body")
    stats = loadgen.run(spec(port, count=5, connections=2))
    assert (stats.ok, stats.failed) == (0, 5)
    assert stats.errors["dropped"] == 5


def test_a_421_greeting_fails_the_message_not_the_generator(sinks: Callable[..., Any]) -> None:
    port = free_port()
    sinks(HOST, port, greeting="421 4.7.0 Too busy")
    stats = loadgen.run(spec(port, count=3))
    assert (stats.ok, stats.failed) == (0, 3)
    assert stats.errors["banner:421"] == 3


def test_nothing_listening_counts_connect_failures() -> None:
    stats = loadgen.run(spec(free_port(), count=7, connections=3))
    assert (stats.ok, stats.failed, stats.connect_failures) == (0, 7, 7)
    assert stats.errors["connect:ConnectionRefusedError"] == 7


def test_starttls_before_mail(sinks: Callable[..., Any]) -> None:
    port = free_port()
    sink = sinks(HOST, port, starttls=True)
    stats = loadgen.run(spec(port, count=4, connections=2, per_connection=2, starttls=True))
    assert (stats.ok, stats.failed) == (4, 0)
    assert all(m.tls and m.tls.startswith("TLS") for m in sink.wait_messages(4))
    assert sink.tls_handshakes == 2


def test_starttls_demanded_but_not_offered(sinks: Callable[..., Any]) -> None:
    port = free_port()
    sinks(HOST, port)
    stats = loadgen.run(spec(port, count=2, starttls=True))
    assert stats.ok == 0 and stats.errors["no-starttls"] == 2


def test_duration_bounds_an_unbounded_count(smtp_sink: Callable[..., Any]) -> None:
    port = free_port()
    smtp_sink(HOST, port)
    t = time.monotonic()
    stats = loadgen.run(spec(port, count=None, duration=0.6, connections=4, per_connection=50))
    assert 0.5 < time.monotonic() - t < 5
    assert stats.ok > 10 and stats.failed == 0


def test_rate_limits_the_send_rate(smtp_sink: Callable[..., Any]) -> None:
    port = free_port()
    smtp_sink(HOST, port)
    stats = loadgen.run(spec(port, count=None, duration=1.0, rate=50, connections=5, per_connection=100))
    # The limit is the upper bound; a loaded machine may start fewer than its 50 slots (no catch-up).
    assert 30 <= stats.ok <= 50  # 50/s for 1 s: no slot starts at or past the deadline


def test_two_processes_share_the_count(smtp_sink: Callable[..., Any]) -> None:
    port = free_port()
    sink = smtp_sink(HOST, port)
    seen: list[tuple[int, int, float]] = []
    stats = loadgen.run(spec(port, count=1000, connections=4, per_connection=100), procs=2,
                        progress=lambda ok, failed, t: seen.append((ok, failed, t)))  # fmt: skip
    assert (stats.ok, stats.failed) == (1000, 0)
    assert len(stats.txn) == 1000
    assert sink.wait_count(1000) == 1000
    assert seen and seen[-1][0] <= 1000


def test_cli_json_report(smtp_sink: Callable[..., Any]) -> None:
    port = free_port()
    sink = smtp_sink(HOST, port)
    args = ["--server", f"{HOST}:{port}", "-c", "5", "-m", "10", "-n", "200", "--size", "1KiB"]
    r = run_fastmta("load", *args, "--pipelining", "--json")
    assert r.returncode == 0, r.stderr.decode()
    report = json.loads(r.stdout)
    assert (report["ok"], report["failed"], report["size"]) == (200, 0, pytest.approx(1024, abs=8))
    assert set(report["latency_ms"]) == {"connect", "data", "txn"}
    assert report["latency_ms"]["txn"]["p99"] >= report["latency_ms"]["txn"]["p50"] > 0
    assert report["msgs_per_s"] > 0 and report["pipelining"] is True
    assert sink.wait_count(200) == 200
    assert b"\r" not in r.stderr  # stderr is not a tty here: no in-place progress line


def test_cli_text_report_and_exit_codes(tmp_path: Path) -> None:
    dead = free_port()
    r = run_fastmta("load", "--server", f"{HOST}:{dead}", "-n", "3", "-q")
    assert r.returncode == 1
    assert b"connect:ConnectionRefusedError" in r.stdout and b"accepted 0" in r.stdout
    assert run_fastmta("load", "--server", "nope:port").returncode == 64
    assert run_fastmta("load", "--corpus", str(tmp_path)).returncode == 64
    assert run_fastmta("load", "-c", "0").returncode == 64


@pytest.mark.parametrize("procs", [1, 2])
def test_ctrl_c_stops_cleanly_and_still_reports(smtp_sink: Callable[..., Any], procs: int) -> None:
    port = free_port()
    smtp_sink(HOST, port)
    cmd = [*fastmta_cmd("load"), "--server", f"{HOST}:{port}", "-c", "4", "-m", "1000", "--duration", "60s",
           "--procs", str(procs), "--json"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        # Ctrl-C before the senders run (and catch it) would find Python's default handler:
        # wait until every sending process holds a connection to the sink.
        def sending() -> bool:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""  # type: ignore[union-attr]
            senders = [proc.pid] if procs == 1 else _children(proc.pid)
            return len(senders) == procs and all(_connected_to(pid, port) for pid in senders)

        wait_until(sending, what="every load process sending")
        t = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert time.monotonic() - t < 20
    assert proc.returncode == 0, err.decode()
    report = json.loads(out)
    assert report["ok"] > 0 and report["failed"] == 0 and report["elapsed_s"] < 30


def test_cli_targets_the_first_listener_of_the_config(
    smtp_sink: Callable[..., Any], make_config: Callable[..., Path]
) -> None:
    port = free_port()
    sink = smtp_sink(HOST, port)
    cfg = make_config(f'[[listener]]\naddress = "{HOST}:{port}"\n')
    r = run_fastmta("load", "--config", str(cfg), "-n", "7", "-c", "2", "--json")
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout)["target"] == f"{HOST}:{port}"
    assert sink.wait_count(7) == 7
    bad = make_config("[limits]\nmax_recipients = 0\n", name="bad.toml")
    assert run_fastmta("load", "--config", str(bad), "-n", "1").returncode == 2


def test_auth_plain_before_mail(sinks: Callable[..., Any]) -> None:
    port = free_port()
    sink = sinks(HOST, port, auth={"loaduser": "s3cret"})
    stats = loadgen.run(spec(port, count=3, connections=1, per_connection=3, auth=("loaduser", "s3cret")))
    assert (stats.ok, stats.failed) == (3, 0)
    assert [m.auth_user for m in sink.wait_messages(3)] == ["loaduser"] * 3
    assert sink.commands.count("AUTH PLAIN") == 1
    bad = loadgen.run(spec(port, count=2, auth=("loaduser", "wrong")))
    assert (bad.ok, bad.failed, bad.errors["auth:535"]) == (0, 2, 2)


def test_implicit_tls_from_the_first_byte(tls_ca: Any) -> None:
    from aiosmtpd.controller import Controller

    from tests.fixtures.sink import server_context

    class Counter:
        received = 0

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            self.received += 1
            return "250 2.0.0 OK"

    port = free_port()
    handler = Counter()
    controller = Controller(handler, hostname=HOST, port=port, ssl_context=server_context(tls_ca, HOST))
    controller.start()
    try:
        stats = loadgen.run(spec(port, count=4, connections=2, per_connection=2, tls=True))
        assert (stats.ok, stats.failed, handler.received) == (4, 0, 4)
        plain = loadgen.run(replace(spec(port, count=1), timeout=1.0))  # no TLS: no banner ever comes
        assert plain.ok == 0 and plain.failed == 1
    finally:
        controller.stop()


def test_workers_do_not_outlive_a_killed_parent(smtp_sink: Callable[..., Any]) -> None:
    port = free_port()
    smtp_sink(HOST, port)
    cmd = [
        *fastmta_cmd("load"),
        "--server",
        f"{HOST}:{port}",
        "-c",
        "4",
        "--duration",
        "60s",
        "--procs",
        "2",
        "-q",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        wait_until(lambda: len(_children(proc.pid)) == 2, what="two load workers")
        workers = _children(proc.pid)
        proc.kill()
        proc.wait(30)
        wait_until(lambda: not any(_alive(w) for w in workers), what="the workers to die with their parent")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _stat(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _ppid(pid: int) -> int:
    st = _stat(pid)
    return int(st[1]) if st else -1


def _children(pid: int) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(int(p.name)) == pid]


def _connected_to(pid: int, port: int) -> bool:
    """Process ``pid`` holds an established IPv4 TCP connection to ``port`` (/proc: its fds, net/tcp)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = fd.readlink().name
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if parts[3] == "01" and int(parts[2].rsplit(":", 1)[1], 16) == port and parts[9] in inodes:
            return True
    return False


def _alive(pid: int) -> bool:
    st = _stat(pid)
    return bool(st) and st[0] != "Z"  # a zombie waits only for its reaper


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_proxy_headers_claim_addresses_in_turn(tmp_path: Path, version: str) -> None:
    from tests.fixtures.server import running

    with running(tmp_path / "srv", mx="proxy_protocol = true") as srv:
        stats = loadgen.run(spec(srv.port, count=6, connections=2, proxy=version, proxy_from="127.0.0.0/29"))
        assert (stats.ok, stats.failed) == (6, 0), dict(stats.errors)
        clients = sorted(
            body.split(b"[", 1)[1].split(b"]", 1)[0].decode() for body in srv.bodies().values()
        )  # the Received: line names the client the PROXY header gave
    assert clients == [f"127.0.0.{i}" for i in range(1, 7)]


def test_cli_refuses_proxy_with_implicit_tls() -> None:
    r = run_fastmta("load", "--server", f"{HOST}:{free_port()}", "--proxy", "v1", "--tls", "-n", "1")
    assert r.returncode == 64 and b"--starttls" in r.stderr
    assert run_fastmta("load", "--proxy-from", "not-a-net", "-n", "1").returncode == 64
