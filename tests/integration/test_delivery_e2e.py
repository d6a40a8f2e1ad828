# SPDX-License-Identifier: MIT
"""End to end: a real ``fastmta serve`` process, smtplib injection, dnsmasq, receiving sinks.

Every MX host is an aiosmtpd sink on its own 127.0.0.x address sharing one port
(``[delivery] port``); dnsmasq on a loopback port answers the MX and A records.
The JSON delivery log on the server's stdout is read back and checked.
"""

from __future__ import annotations

import email
import email.policy
import json
import time
from email.message import EmailMessage, Message
from typing import Any

import pytest

from tests.fixtures.mta import SENDER, Env
from tests.support import ServerProcess, free_port, run_fastmta, wait_until

MX = [
    ("a.test", "mx.a.test", 10),
    ("b.test", "mx.b.test", 10),
    ("src.test", "mx.src.test", 10),
    ("dead.test", "mx.dead.test", 10),
]
HOSTS = {
    "mx.a.test": "127.0.0.2",
    "mx.b.test": "127.0.0.3",
    "mx.src.test": "127.0.0.4",
    "mx.dead.test": "127.0.0.5",
}


def _dsn(data: bytes) -> tuple[EmailMessage, list[Message]]:
    """A DSN and the field blocks of its delivery-status part (per-message block first)."""
    msg = email.message_from_bytes(data, policy=email.policy.default)
    blocks = list(msg.iter_parts())[1].get_payload()
    assert isinstance(blocks, list)
    return msg, [b for b in blocks if isinstance(b, Message)]


@pytest.fixture
def mta(make_config: Any, dnsmasq: Any, sinks: Any, sink_port: int) -> Any:
    started: list[ServerProcess] = []

    def start(delivery: str = "", metrics_port: int = 0, retry: str = "1s", **scripts: dict[str, Any]) -> Env:
        dns = dnsmasq(mx=MX, hosts=HOSTS)
        boxes = {
            name: sinks(HOSTS[f"mx.{name}"], sink_port, **scripts.get(name.replace(".", "_"), {}))
            for name in ("a.test", "b.test", "src.test")
        }
        port = free_port()
        cfg = make_config(f"""
            [[listener]]
            address = "127.0.0.1:{port}"

            [delivery]
            port = {sink_port}
            tls = "none"
            retry_schedule = ["{retry}"]
            connect_timeout = "2s"
            {delivery}

            [dns]
            nameservers = ["{dns.address}"]
            timeout = "1s"

            [metrics]
            address = "{f"127.0.0.1:{metrics_port}" if metrics_port else ""}"
        """)
        server = ServerProcess(cfg, ("127.0.0.1", port))
        started.append(server)
        return Env(server, port, boxes)

    yield start
    for s in started:
        s.stop()


def rcpts_of(recs: list[dict[str, Any]]) -> set[str]:
    return {r["rcpt"] for r in recs}


def test_delivered_to_each_destination(mta: Any) -> None:
    env = mta()
    env.send(["x@a.test", "y@a.test", "z@b.test"])
    a, b = env.sinks["a.test"], env.sinks["b.test"]
    a.wait_messages(1)
    b.wait_messages(1)
    assert sorted(a.messages[0].rcpt_tos) == ["x@a.test", "y@a.test"]  # one transaction per destination
    assert a.messages[0].mail_from == SENDER and b"Subject: hello" in a.messages[0].data
    recs = env.wait_log(lambda rs: len([r for r in rs if r["event"] == "delivered"]) == 3)
    d = [r for r in recs if r["event"] == "delivered"][0]
    assert d["code"] == 250 and d["attempt"] == 1 and "127.0.0." in d["nexthop"] and d["elapsed_ms"] >= 0
    assert {"ts", "id", "from", "rcpt", "enhanced", "response", "tls"} <= d.keys()


def test_retry_then_success(mta: Any) -> None:
    env = mta(a_test={"rcpt_default": "451 4.3.0 busy, try later"})
    env.send(["x@a.test"])
    env.wait_log(lambda rs: any(r["event"] == "deferred" for r in rs))
    env.sinks["a.test"].script.rcpt_default = None
    recs = env.wait_log(lambda rs: any(r["event"] == "delivered" for r in rs))
    deferred = [r for r in recs if r["event"] == "deferred"]
    assert deferred[0]["code"] == 451 and deferred[0]["bounce_class"]
    assert [r for r in recs if r["event"] == "delivered"][0]["attempt"] >= 2, json.dumps(recs, indent=0)
    assert env.sinks["a.test"].rcpts() == ["x@a.test"]


def test_per_recipient_mix_and_bounce_content(mta: Any) -> None:
    env = mta(a_test={"rcpt": {"bad@a.test": "550 5.1.1 no such user", "late@a.test": "451 4.2.1 later"}})
    env.send(["good@a.test", "bad@a.test", "late@a.test"], subject="mixed")
    recs = env.wait_log(lambda rs: {"delivered", "bounced", "deferred"} <= {r["event"] for r in rs})
    by_rcpt = {r["rcpt"]: r["event"] for r in recs if r["event"] != "received" and r["from"] == SENDER}
    assert by_rcpt["good@a.test"] == "delivered" and by_rcpt["bad@a.test"] == "bounced"
    assert by_rcpt["late@a.test"] == "deferred"
    bounced = [r for r in recs if r["event"] == "bounced"][0]
    assert (
        bounced["code"] == 550
        and bounced["enhanced"] == "5.1.1"
        and bounced["bounce_class"] == "invalid_recipient"
    )
    dsn = env.sinks["src.test"].wait_messages(1)[0]
    assert dsn.mail_from in ("", "<>") and dsn.rcpt_tos == [SENDER]
    msg, (head, *blocks) = _dsn(dsn.data)
    assert msg.get_content_type() == "multipart/report" and msg.get_param("report-type") == "delivery-status"
    assert head["Reporting-MTA"] == "dns; mx.fastmta.test"
    assert [b["Final-Recipient"] for b in blocks] == ["rfc822; bad@a.test"]
    assert blocks[0]["Action"] == "failed" and blocks[0]["Status"] == "5.1.1"
    assert "550 5.1.1 no such user" in blocks[0]["Diagnostic-Code"]
    assert blocks[0]["Remote-MTA"] == "dns; mx.a.test"
    assert "Subject: mixed" in list(msg.iter_parts())[2].get_content()
    env.sinks["a.test"].script.rcpt = {}
    env.wait_log(lambda rs: any(r["event"] == "delivered" and r["rcpt"] == "late@a.test" for r in rs))
    assert sorted(env.sinks["a.test"].rcpts()) == ["good@a.test", "late@a.test"]


def test_expiry_bounces_with_4_4_7(mta: Any) -> None:
    env = mta('max_queue_lifetime = "2s"', a_test={"rcpt_default": "451 4.3.0 busy"})
    env.send(["x@a.test"], subject="expiring")
    recs = env.wait_log(lambda rs: any(r["event"] == "expired" for r in rs))
    exp = [r for r in recs if r["event"] == "expired"][0]
    assert exp["rcpt"] == "x@a.test" and exp["code"] == 451
    dsn = env.sinks["src.test"].wait_messages(1)[0]
    block = _dsn(dsn.data)[1][1]
    assert block["Status"] == "4.4.7" and block["Action"] == "failed"


def seconds_beside(env: Any, stuck: str, healthy: str, n: int) -> float:
    """Queue ``n`` messages to ``stuck``, then ``n`` to ``healthy``: seconds until the
    healthy destination's sink has all of its ``n``."""
    for i in range(n):
        env.send([f"u{i}@{stuck}"], subject=f"stuck {i}")
    t0 = time.monotonic()
    for i in range(n):
        env.send([f"u{i}@{healthy}"], subject=f"healthy {i}")
    env.sinks[healthy].wait_messages(n, timeout=30)
    return time.monotonic() - t0


def test_dead_destination_does_not_delay_a_healthy_one(mta: Any) -> None:
    env = mta()
    # Not queued behind the dead one (slack for a loaded machine).
    assert seconds_beside(env, "dead.test", "a.test", 5) < 8
    recs = env.wait_log(lambda rs: len([r for r in rs if r["event"] == "deferred"]) >= 5)
    assert rcpts_of([r for r in recs if r["event"] == "deferred"]) >= {f"u{i}@dead.test" for i in range(5)}


def test_shaping_rule_suspends_destination_answering_tss04(mta: Any) -> None:
    env = mta(
        """
        max_connections_per_destination = 1

        [[delivery.shaping]]
        match = "TSS04"
        action = "suspend"
        duration = "1h"
    """,
        a_test={"greeting": "421 4.7.0 [TSS04] Messages temporarily deferred due to user complaints"},
    )
    for i in range(4):
        env.send([f"u{i}@a.test"], subject=f"m{i}")
    recs = env.wait_log(lambda rs: len([r for r in rs if r["event"] == "deferred"]) >= 4)
    connections = env.sinks["a.test"].connections
    time.sleep(1.5)  # a retry interval ("1s") passes: still suspended, nobody connects again
    deferred = env.log("deferred")
    assert any("TSS04" in r["response"] for r in deferred)
    assert len(deferred) == len([r for r in recs if r["event"] == "deferred"])
    assert env.sinks["a.test"].connections == connections == 1  # the first attempt, then an hour of quiet


def test_notify_success_envid_and_orcpt(mta: Any) -> None:
    env = mta()
    env.send(
        ["x@a.test"],
        subject="notify",
        mail_options=["RET=HDRS", "ENVID=env+2Dtag"],
        rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;X@a.test"],
    )
    env.sinks["a.test"].wait_messages(1)
    dsn = env.sinks["src.test"].wait_messages(1)[0]
    head, block = _dsn(dsn.data)[1]
    assert head["Original-Envelope-Id"] == "env-tag"
    assert block["Action"] == "relayed" and block["Status"].startswith("2.")  # the sink offers no DSN
    assert block["Original-Recipient"] == "rfc822; X@a.test"


def test_notify_success_relayed_only_where_the_next_hop_has_no_dsn(mta: Any) -> None:
    """RFC 3461 §5.2: a hop offering DSN got NOTIFY and sends the success notice itself."""
    env = mta(a_test={"dsn": True})
    env.send(["x@a.test", "y@b.test"], subject="both", rcpt_options=["NOTIFY=SUCCESS"])
    assert env.sinks["a.test"].wait_messages(1)[0].rcpt_options == [["NOTIFY=SUCCESS"]]
    env.sinks["b.test"].wait_messages(1)
    dsn = env.sinks["src.test"].wait_messages(1)[0]
    blocks = _dsn(dsn.data)[1][1:]
    assert [(b["Final-Recipient"], b["Action"]) for b in blocks] == [("rfc822; y@b.test", "relayed")]
    env.wait_log(lambda rs: len([r for r in rs if r["event"] == "delivered"]) == 3)  # x, y, the DSN
    assert len(env.sinks["src.test"].messages) == 1  # no notice about x@a.test


def test_notify_never_silences_the_bounce(mta: Any) -> None:
    env = mta(a_test={"rcpt_default": "550 5.1.1 no such user"})
    env.send(["x@a.test"], subject="quiet", rcpt_options=["NOTIFY=NEVER"])
    env.wait_log(lambda rs: any(r["event"] == "bounced" for r in rs))
    time.sleep(0.5)
    assert env.sinks["src.test"].messages == []


def test_delivery_metrics(mta: Any) -> None:
    import urllib.request

    mport = free_port()
    env = mta(metrics_port=mport, a_test={"rcpt": {"bad@a.test": "550 5.1.1 no such user"}})
    env.send(["good@a.test", "bad@a.test"])
    env.wait_log(lambda rs: any(r["event"] == "bounced" for r in rs))
    env.sinks["src.test"].wait_messages(1)  # the DSN, delivered too

    def scrape() -> str:
        return str(urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=30).read().decode())

    # good@ and the DSN; the DSN's count follows the sink's 250
    wait_until(lambda: 'fastmta_deliveries_total{result="delivered"} 2.0' in scrape(), what="2 deliveries")
    text = scrape()
    assert 'fastmta_deliveries_total{result="bounced"} 1.0' in text
    assert 'fastmta_delivery_failures_total{bounce_class="invalid_recipient",result="bounced"} 1.0' in text
    assert "fastmta_delivery_seconds_count" in text and 'fastmta_queue_messages{state="inflight"}' in text


def queue_ids(env: Env) -> list[str]:
    out = run_fastmta("queue", "list", "--json", "--config", str(env.server.config_path))
    assert out.returncode == 0, out.stderr
    return [json.loads(line)["id"] for line in out.stdout.decode().splitlines() if line.strip()]


def test_queue_flush_from_another_process_retries_now(mta: Any) -> None:
    env = mta(retry="1h", a_test={"rcpt_default": "451 4.3.0 busy"})
    env.send(["x@a.test"], subject="flushed")
    env.wait_log(lambda rs: any(r["event"] == "deferred" for r in rs))
    env.sinks["a.test"].script.rcpt_default = None
    assert len(queue_ids(env)) == 1
    flushed = run_fastmta("queue", "flush", "--config", str(env.server.config_path))
    assert flushed.returncode == 0, flushed.stderr
    env.wait_log(lambda rs: any(r["event"] == "delivered" for r in rs))
    assert env.sinks["a.test"].rcpts() == ["x@a.test"]


@pytest.mark.parametrize("scope", ["all", "id", "domain"])
def test_queue_flush_lifts_the_suspension_of_a_refusing_destination(
    mta: Any, sinks: Any, sink_port: int, scope: str
) -> None:
    """``postqueue -f`` semantics: refused → suspended for the 1 h retry interval; the host
    comes up, ``fastmta queue flush`` from another process → delivered within seconds."""
    env = mta(retry="1h")
    env.send(["x@dead.test"], subject="refused")
    recs = env.wait_log(lambda rs: any(r["event"] == "deferred" for r in rs))
    assert [r["code"] for r in recs if r["event"] == "deferred"] == [421]
    box = sinks(HOSTS["mx.dead.test"], sink_port)
    (msg_id,) = queue_ids(env)
    args = {"all": [], "id": [msg_id], "domain": ["--domain", "dead.test"]}[scope]
    t0 = time.monotonic()
    flushed = run_fastmta("queue", "flush", *args, "--config", str(env.server.config_path))
    assert flushed.returncode == 0, flushed.stderr
    box.wait_messages(1, timeout=30)
    assert time.monotonic() - t0 < 20 and box.rcpts() == ["x@dead.test"]  # now, not in an hour
    env.wait_log(lambda rs: any(r["event"] == "delivered" and r["id"] == msg_id for r in rs))


def test_queue_bounce_from_another_process_sends_the_dsn(mta: Any) -> None:
    env = mta(retry="1h", a_test={"rcpt_default": "451 4.3.0 busy"})
    env.send(["x@a.test"], subject="given up")
    env.wait_log(lambda rs: any(r["event"] == "deferred" for r in rs))
    (msg_id,) = queue_ids(env)
    bounced = run_fastmta("queue", "bounce", msg_id, "--config", str(env.server.config_path))
    assert bounced.returncode == 0, bounced.stderr
    dsn = env.sinks["src.test"].wait_messages(1)[0]
    block = list(email.message_from_bytes(dsn.data, policy=email.policy.default).iter_parts())[
        1
    ].get_payload()[1]
    assert block["Action"] == "failed" and block["Final-Recipient"] == "rfc822; x@a.test"
    assert "administrator" in block["Diagnostic-Code"]
    env.wait_log(lambda rs: any(r["event"] == "bounced" and r["id"] == msg_id for r in rs))
    assert queue_ids(env) == []


def test_connection_limit_holds_at_connection_turnover(mta: Any) -> None:
    """A spent connection's slot is given back only once it is closed: a receiver counting its
    open connections never sees more than max_connections_per_destination, even while old
    connections QUIT and new ones open."""
    env = mta("max_connections_per_destination = 2\nmax_messages_per_connection = 2", a_test={"delay": 0.01})
    for i in range(40):
        env.send([f"r{i}@a.test"], subject=f"m{i}")
    sink = env.sinks["a.test"]
    sink.wait_messages(40, timeout=60)
    assert sink.connections >= 20  # two messages per connection: plenty of turnovers
    assert sink.peak_open <= 2, sink.peak_open


def test_slow_destination_does_not_delay_a_fast_one(mta: Any) -> None:
    env = mta("max_connections_per_destination = 2", b_test={"delay": 0.5})
    assert seconds_beside(env, "b.test", "a.test", 6) < 4
    assert len(env.sinks["b.test"].messages) < 6  # still crawling along on its own two connections
