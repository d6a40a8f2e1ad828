# SPDX-License-Identifier: MIT
"""DKIM end to end: a real ``fastmta serve`` relays to an aiosmtpd sink; dkimpy and OpenDKIM
check what arrives (keys and verifiers: tests/fixtures/dkim.py)."""

from __future__ import annotations

import json
import re
import signal
import smtplib
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.dkim import DOMAIN, ED, RSA, Keys
from tests.support import ServerProcess, free_port, wait_until

SINK_HOST = "127.0.0.2"


class Relay:
    def __init__(self, server: ServerProcess, port: int, sink: Any, metrics_port: int, config: Path) -> None:
        self.server, self.port, self.sink, self.metrics_port, self.config = (
            server,
            port,
            sink,
            metrics_port,
            config,
        )

    def send(self, sender: str, rcpt: str, subject: str = "hello") -> None:
        msg = f"From: Alice <{sender}>\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\nbody of {subject}  \r\n\r\n"
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as c:
            c.sendmail(sender, [rcpt], msg.encode())

    def log(self, event: str) -> list[dict[str, Any]]:
        recs = [json.loads(line) for line in self.server.log_lines() if line.startswith("{")]
        return [r for r in recs if r["event"] == event]

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            return str(r.read().decode())


@pytest.fixture
def relay(make_config: Any, sinks: Any, sink_port: int, dkim_keys: Keys, tmp_path: Path) -> Any:
    started: list[ServerProcess] = []

    def start(extra_dkim: str = "", **script: Any) -> Relay:
        sink = sinks(SINK_HOST, sink_port, **script)
        port, metrics_port = free_port(), free_port()
        cfg = make_config(f"""
            [[listener]]
            address = "127.0.0.1:{port}"

            [policy]
            local_domains = ["local.test"]

            [delivery]
            tls = "none"
            retry_schedule = ["1s"]
            bounce_from = "MAILER-DAEMON@bounces.{DOMAIN}"

            [[route]]
            domain = "*"
            nexthop = "{SINK_HOST}:{sink_port}"

            [metrics]
            address = "127.0.0.1:{metrics_port}"

            {dkim_keys.entry(RSA)}
            {dkim_keys.entry(ED)}
            {extra_dkim}
        """)
        server = ServerProcess(cfg, ("127.0.0.1", port))
        started.append(server)
        return Relay(server, port, sink, metrics_port, cfg)

    yield start
    for s in started:
        s.stop()


def _signatures(data: bytes) -> list[bytes]:
    return re.findall(rb"(?ims)^DKIM-Signature:.*?\r\n(?![ \t])", data)


def test_relayed_mail_verifies_with_dkimpy_and_opendkim(relay: Any, dkim_keys: Keys) -> None:
    r = relay()
    r.send(f"alice@{DOMAIN}", "bob@dest.test")
    (got,) = r.sink.wait_messages(1)
    assert len(_signatures(got.data)) == 2
    assert dkim_keys.dkimpy(got.data) == [True, True]
    assert dkim_keys.opendkim(got.data) == {RSA: "pass", ED: "pass"}
    wait_until(lambda: r.log("delivered"), 10, "the delivered log line")
    assert r.log("delivered")[0]["dkim"] == [DOMAIN]
    text = r.metrics()
    for alg in ("rsa", "ed25519"):
        assert f'fastmta_dkim_signatures_total{{algorithm="{alg}",result="signed"}} 1.0' in text
    assert "fastmta_dkim_sign_seconds_count 1.0" in text


def test_a_retry_carries_the_same_signature(relay: Any, dkim_keys: Keys) -> None:
    r = relay(data="451 4.3.0 try again later")
    r.send(f"alice@news.{DOMAIN}", "bob@dest.test")
    r.sink.wait_messages(1)
    wait_until(lambda: r.log("deferred"), 10, "the deferred log line")
    r.sink.script.data = None
    first, second = r.sink.wait_messages(2)
    assert _signatures(first.data) == _signatures(second.data) and len(_signatures(second.data)) == 2
    assert dkim_keys.dkimpy(second.data) == [True, True]
    wait_until(lambda: r.log("delivered"), 10, "the delivered log line")
    assert [x["dkim"] for x in r.log("deferred") + r.log("delivered")] == [[DOMAIN], [DOMAIN]]


def test_local_mail_and_other_domains_are_not_signed(relay: Any, tmp_path: Path) -> None:
    r = relay()
    r.send(f"alice@{DOMAIN}", "carol@local.test")
    r.send("alice@other.test", "bob@dest.test")
    (got,) = r.sink.wait_messages(1)
    assert _signatures(got.data) == [] and b"alice@other.test" in got.data
    box = tmp_path / "mail" / "local.test" / "carol" / "new"
    wait_until(lambda: box.exists() and any(box.iterdir()), 10, "the local delivery")
    (stored,) = box.iterdir()
    assert _signatures(stored.read_bytes()) == []
    wait_until(lambda: len(r.log("delivered")) == 2, 10, "two delivered lines")
    assert all("dkim" not in x for x in r.log("delivered"))


def test_dsn_from_a_signed_bounce_domain_is_signed(relay: Any, dkim_keys: Keys) -> None:
    r = relay(rcpt={"nobody@dest.test": "550 5.1.1 no such user"})
    r.send("alice@sender.test", "nobody@dest.test")
    (dsn,) = r.sink.wait_messages(1)
    assert dsn.mail_from == "<>" and dsn.rcpt_tos == ["alice@sender.test"]
    assert re.search(rf"(?m)^From: .*MAILER-DAEMON@bounces.{DOMAIN}".encode(), dsn.data)
    assert dkim_keys.dkimpy(dsn.data) == [True, True]


def test_sighup_loads_new_keys(relay: Any, dkim_keys: Keys) -> None:
    r = relay()
    dkim_keys.add("e2027", "ed25519")
    r.config.write_text(r.config.read_text() + "\n" + dkim_keys.entry("e2027"))
    r.server.signal(signal.SIGHUP)
    wait_until(lambda: "configuration reloaded" in r.server.stderr(), 20, "the reload")
    r.send(f"alice@{DOMAIN}", "bob@dest.test")
    (got,) = r.sink.wait_messages(1)
    assert len(_signatures(got.data)) == 3 and dkim_keys.dkimpy(got.data) == [True, True, True]
    assert dkim_keys.opendkim(got.data) == {RSA: "pass", ED: "pass", "e2027": "pass"}
