# SPDX-License-Identifier: MIT
"""Start-up, SIGTERM drain, SIGHUP reload, embedded defaults, start-up errors."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.metrics import scrape, value
from tests.fixtures.server import RawClient, make_certs, running
from tests.support import ROOT, caught_signals, fastmta_cmd, free_port, require_tool, run_fastmta, wait_until

pytestmark = pytest.mark.timeout(60)


def test_startup_lines_go_to_stderr_and_log_to_stdout(tmp_path: Path) -> None:
    with running(tmp_path) as srv:
        with smtplib.SMTP(srv.host, srv.port, timeout=30) as s:
            s.sendmail("a@x.test", ["b@y.test"], b"Subject: x\r\n\r\ny\r\n")
        err = srv.proc.stderr()
        assert f"listening on mx (127.0.0.1:{srv.port}, mode relay, tls none)" in err
        assert f"spool at {tmp_path / 'spool'}" in err and "parser backend" in err
    lines = srv.proc.log_path.read_text().splitlines()  # the server has stopped: every line is out
    assert lines and all(json.loads(line)["event"] == "received" for line in lines)


def test_sigterm_drains(tmp_path: Path) -> None:
    with running(tmp_path) as srv:
        busy = RawClient(srv.host, srv.port)
        busy.cmd(b"EHLO busy.test")
        busy.cmd(b"MAIL FROM:<a@x.test>")
        busy.cmd(b"RCPT TO:<b@y.test>")
        idle = RawClient(srv.host, srv.port)
        idle.cmd(b"EHLO idle.test")
        srv.proc.signal(signal.SIGTERM)
        assert idle.reply() == b"421 4.3.2 Service shutting down, try again later\r\n"
        assert idle.closed()
        late = RawClient(srv.host, srv.port)  # still listening: told 421, not refused
        assert late.banner.startswith(b"421 4.3.2")
        assert busy.cmd(b"DATA").startswith(b"354")
        assert busy.cmd(b"Subject: in flight\r\n\r\nx\r\n.").startswith(b"250 2.0.0 Ok: queued as ")
        assert busy.reply().startswith(b"421 4.3.2")
        assert busy.closed()
        assert srv.proc.proc.wait(30) == 0
        assert "stopped" in srv.proc.stderr()
    assert len(srv.bodies()) == 1


def test_shutdown_grace_is_bounded(tmp_path: Path) -> None:
    with running(tmp_path, '[server]\nshutdown_grace = "1s"\n') as srv:
        stuck = RawClient(srv.host, srv.port)
        stuck.cmd(b"EHLO s.test")
        stuck.cmd(b"MAIL FROM:<a@x.test>")
        stuck.cmd(b"RCPT TO:<b@y.test>")
        stuck.cmd(b"DATA")
        stuck.send(b"Subject: never finished\r\n")
        t0 = time.monotonic()
        srv.proc.signal(signal.SIGTERM)
        assert srv.proc.proc.wait(30) == 0
        assert 0.9 <= time.monotonic() - t0 < 20  # the 1 s grace, not the 30 s default (slack: a loaded exit)
        assert stuck.closed()
    assert srv.bodies() == {}


def test_sighup_reloads_policy_and_certificates(tmp_path: Path) -> None:
    extra = '[policy]\nrelay_networks = []\nrelay_domains = ["one.test"]\n'
    extra += '[tls]\ncert_file = "{cert}"\nkey_file = "{key}"\n'
    with running(tmp_path, extra, tls=True, mx='tls = "starttls"') as srv:
        assert srv.ca is not None
        kept = RawClient(srv.host, srv.port)
        kept.cmd(b"EHLO k.test")
        kept.cmd(b"MAIL FROM:<a@x.test>")
        assert kept.cmd(b"RCPT TO:<r@two.test>").startswith(b"554 5.7.1")
        # new policy and a certificate from a new CA
        new_dir = tmp_path / "new"
        new_dir.mkdir()
        new_ca, cert, key, _ = make_certs(new_dir)
        text = srv.proc.config_path.read_text().replace('"one.test"', '"two.test"')
        text = text.replace(str(tmp_path / "cert.pem"), str(cert)).replace(
            str(tmp_path / "key.pem"), str(key)
        )
        srv.proc.config_path.write_text(text)
        srv.proc.signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in srv.proc.stderr(), what="the reload")
        # the old connection is alive; new connections see the new policy and certificate
        assert kept.cmd(b"NOOP").startswith(b"250")
        with RawClient(srv.host, srv.port) as c:
            c.cmd(b"EHLO n.test")
            c.cmd(b"MAIL FROM:<a@x.test>")
            assert c.cmd(b"RCPT TO:<r@two.test>").startswith(b"250")
            assert c.cmd(b"RCPT TO:<r@one.test>").startswith(b"554")
        ctx = ssl.create_default_context()
        new_ca.configure_trust(ctx)
        with smtplib.SMTP(srv.host, srv.port, timeout=30) as s:
            s.ehlo("t.test")
            assert s.starttls(context=ctx)[0] == 220
        kept.close()


def test_bad_reload_keeps_running_config(tmp_path: Path) -> None:
    with running(tmp_path) as srv:
        srv.proc.config_path.write_text(srv.proc.config_path.read_text() + "\n[limits]\nmax_recipientz = 1\n")
        srv.proc.signal(signal.SIGHUP)
        wait_until(lambda: "reload refused" in srv.proc.stderr(), what="the refused reload")
        assert "limits.max_recipientz: unknown key" in srv.proc.stderr()
        with RawClient(srv.host, srv.port) as c:
            assert c.cmd(b"NOOP").startswith(b"250")


def test_embedded_defaults(tmp_path: Path) -> None:
    """No config: 127.0.0.1:2525, spool in ./fastmta-spool. Nothing is relayed (no DATA), so no DNS."""
    for _ in range(100):  # another test run may hold the default port for a moment
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 2525), timeout=0.2):
            time.sleep(0.1)
            continue
        break
    env = {k: v for k, v in os.environ.items() if k != "FASTMTA_CONFIG"}
    env["PYTHONPATH"] = str(ROOT)
    err = tmp_path / "err"
    with open(err, "wb") as ef:
        proc = subprocess.Popen(
            fastmta_cmd("serve"), cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=ef
        )
        try:

            def ready() -> bool:  # listening, and SIGTERM drains (the handler comes just after the listener)
                assert proc.poll() is None, err.read_text()
                return "listening on" in err.read_text() and signal.SIGTERM in caught_signals(proc.pid)

            wait_until(ready, what="the default listener and the SIGTERM handler")
            with RawClient("127.0.0.1", 2525) as c:
                ehlo = c.cmd(b"EHLO d.test")
                assert b"PIPELINING" in ehlo and b"STARTTLS" not in ehlo
                c.cmd(b"MAIL FROM:<a@x.test>")
                assert c.cmd(b"RCPT TO:<b@y.invalid>").startswith(b"250")  # loopback may relay
                assert c.cmd(b"RSET").startswith(b"250")
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=20)
    text = err.read_text()
    assert "listening on 127.0.0.1:2525" in text
    assert f"spool at {tmp_path / 'fastmta-spool'}" in text
    assert proc.returncode == 0 and out == b""
    assert (tmp_path / "fastmta-spool").stat().st_mode & 0o777 == 0o700


def test_start_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[limits]\nmax_recipients = "many"\n')
    r = run_fastmta("serve", "--config", str(bad))
    assert r.returncode == 2 and b"limits.max_recipients: expected an integer" in r.stderr
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        cfg = tmp_path / "busy.toml"
        cfg.write_text(f'[[listener]]\naddress = "127.0.0.1:{port}"\n[spool]\npath = "{tmp_path / "sp"}"\n'
                       '[metrics]\naddress = ""\n[dns]\nnameservers = ["127.0.0.1:9"]\n')  # fmt: skip
        r = run_fastmta("serve", "--config", str(cfg))
    assert (
        r.returncode == 2
        and f"listener 127.0.0.1:{port}: 127.0.0.1:{port} is already in use".encode() in r.stderr
    )


def test_metrics_per_listener(tmp_path: Path) -> None:
    mport = free_port()
    extra = f'[metrics]\naddress = "127.0.0.1:{mport}"\n'
    extra += '[policy]\nrelay_networks = []\nlocal_domains = ["l.test"]\n'
    with running(tmp_path, extra) as srv:
        with RawClient(srv.host, srv.port) as c:
            c.cmd(b"EHLO m.test")
            c.cmd(b"MAIL FROM:<a@x.test>")
            assert c.cmd(b"RCPT TO:<b@far.test>").startswith(b"554")
            c.cmd(b"RCPT TO:<b@l.test>")
            c.cmd(b"DATA")
            assert c.cmd(b"Subject: m\r\n\r\nx\r\n.").startswith(b"250")
            c.cmd(b"BOGUS")

        def settled() -> bool:  # our close and the harness's readiness probe land asynchronously
            text = scrape(("127.0.0.1", mport))
            return value(text, "fastmta_smtp_connections_active") == 0 and value(
                text, "fastmta_smtp_connections_total") >= 2  # fmt: skip

        wait_until(settled, what="every connection counted and closed")
        curl = [require_tool("curl"), "-sf", f"http://127.0.0.1:{mport}/metrics"]
        text = subprocess.run(curl, capture_output=True, text=True, timeout=10).stdout
        assert f"http://127.0.0.1:{mport}/metrics" in srv.proc.stderr()
    want = [
        'fastmta_messages_received_total{listener="mx"} 1.0',
        'fastmta_messages_rejected_total{listener="mx",reason="relay_denied"} 1.0',
        'fastmta_messages_rejected_total{listener="mx",reason="syntax"} 1.0',
        'fastmta_smtp_connections_active{listener="mx"} 0.0',
    ]
    for line in want:
        assert line in text, line
    # the start-up probes of the test harness connect too
    assert re.search(r'^fastmta_smtp_connections_total\{listener="mx"\} [1-9]', text, re.M)


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_from_the_first_instant_never_kills(make_config: Callable[..., Path], workers: int) -> None:
    """A reload request can come at any moment once the process has started (a
    config-management run, the supervisor forwarding one): through spool start,
    listening and serving, SIGHUP every few ms must never be fatal. (Before its first
    Python line runs a process takes any signal's default action; a service manager
    reloads only a started service.)"""
    port = free_port()
    cfg = make_config(f"""
        [server]
        workers = {workers}

        [[listener]]
        name = "mx"
        address = "127.0.0.1:{port}"
        """)  # fmt: skip
    # a file, not a pipe: hundreds of "reloaded" lines would fill a pipe nobody reads
    # while the loop runs, and a server blocked writing its log answers no one
    err = cfg.parent / "serve.err"
    with err.open("wb") as sink:
        proc = subprocess.Popen(fastmta_cmd("serve", "--config", str(cfg)), cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=sink)  # fmt: skip
    try:
        seen: list[str] = []  # how SIGHUP was first taken: ignored (start-up), then a handler

        def takes_sighup() -> bool:
            if signal.SIGHUP in caught_signals(proc.pid, "SigIgn"):
                seen.append("ignored")
            elif signal.SIGHUP in caught_signals(proc.pid):
                seen.append("handler")
            return bool(seen) or proc.poll() is not None

        wait_until(takes_sighup, what="fastmta takes SIGHUP")
        assert seen[:1] == ["ignored"], "no start-up window where SIGHUP is ignored"
        deadline = time.monotonic() + 60
        banners = 0
        while proc.poll() is None and banners < 20 and time.monotonic() < deadline:
            proc.send_signal(signal.SIGHUP)
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5) as s:
                s.settimeout(10)
                banners += s.recv(100).startswith(b"220")
            time.sleep(0.003)
        assert proc.poll() is None, f"SIGHUP killed fastmta: {err.read_text()[-2000:]}"
        assert banners == 20
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
