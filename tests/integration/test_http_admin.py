# SPDX-License-Identifier: MIT
"""The API's administration endpoints against a real ``fastmta serve``: queue counts, one
message, bounce, suspensions that hold delivery, survive a restart and lift, and the
API on a node with two workers (each worker's shard)."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Callable
from pathlib import Path

from fastmta.config import SpoolConfig
from fastmta.spool import admin, suspend
from tests.fixtures.http import Api, ApiServer, write_tokens
from tests.fixtures.sink import Sink
from tests.fixtures.workers import Supervised
from tests.support import ServerProcess, free_port, run_fastmta, wait_until

INJECT = "/api/v1/inject"


def _inject(api: Api, rcpts: list[str]) -> list[str]:
    doc = {"envelope_sender": "a@src.test", "recipients": [{"email": r} for r in rcpts],
           "content": "From: a@src.test\r\nSubject: x\r\n\r\nhi\r\n"}  # fmt: skip
    status, out, _ = api.call("POST", INJECT, doc)
    assert status == 200, out
    return list(out["ids"])


def test_queue_message_and_bounce(api_server: Callable[..., ApiServer]) -> None:
    s = api_server()
    api = s.api
    a_ids = _inject(api, ["x@a.test", "y@a.test", "z@a.test"])
    b_ids = _inject(api, ["p@b.test", "q@B.test"])
    status, q, _ = api.call("GET", "/api/v1/queue")
    assert status == 200 and q["messages"] == 5 and q["recipients"] == 5
    assert {d["domain"]: (d["ready"], d["deferred"], d["bounce"]) for d in q["destinations"]} == {
        "a.test": (3, 0, 0),
        "b.test": (2, 0, 0),
    }
    status, m, _ = api.call("GET", f"/api/v1/messages/{a_ids[0]}")
    assert (
        status == 200 and m["id"] == a_ids[0] and m["rcpts"] == ["x@a.test"] and "Subject: x" in m["headers"]
    )
    assert api.call("GET", "/api/v1/messages/0000000000000000")[0] == 404
    assert api.call("GET", "/api/v1/messages/not-an-id")[1]["field"] == "id"
    status, out, _ = api.call("POST", "/api/v1/bounce", {"id": a_ids[0], "reason": "spam run"})
    assert status == 200 and out == {"messages": 1}
    m = api.call("GET", f"/api/v1/messages/{a_ids[0]}")[1]
    assert (
        m["recipients"][0]["state"] == "bounce" and m["recipients"][0]["last_error"] == "550 5.0.0 spam run"
    )
    assert api.call("POST", "/api/v1/bounce", {"domain": "b.test"})[1] == {"messages": 2}
    q = api.call("GET", "/api/v1/queue")[1]
    assert {d["domain"]: d["bounce"] for d in q["destinations"]} == {"a.test": 1, "b.test": 2}
    for bad, field in (({"domain": "a.test", "id": "x"}, "domain"), ({"tenant": "a b"}, "tenant"),
                       ({"id": "nope!"}, "id"), ({"domain": "a b"}, "domain"), ({}, "domain")):  # fmt: skip
        status, out, _ = api.call("POST", "/api/v1/bounce", bad)
        assert status == 400 and out["field"] == field, (bad, out)
    assert api.call("POST", "/api/v1/bounce", {"id": "0000000000000000"})[0] == 404
    assert b_ids


def _smtp(port: int, rcpt: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.sendmail("a@src.test", [rcpt], b"From: a@src.test\r\nSubject: s\r\n\r\nhi\r\n")


def test_suspension_holds_delivery_survives_a_restart_and_lifts(
    api_server: Callable[..., ApiServer], sinks: Callable[..., Sink], sink_port: int
) -> None:
    box = sinks("127.0.0.2", sink_port)
    other = sinks("127.0.0.3", sink_port)
    s = api_server(f'[delivery]\nhold = false\nretry_schedule = ["1s"]\n'
                   f'[[route]]\ndomain = "a.test"\nnexthop = "127.0.0.2:{sink_port}"\n'
                   f'[[route]]\ndomain = "b.test"\nnexthop = "127.0.0.3:{sink_port}"\n')  # fmt: skip
    api, port = s.api, s.srv.port
    for bad, field in (({"domain": "a.test"}, "duration"),
                       ({"domain": "a.test", "duration": "soon"}, "duration"),
                       ({"domain": "a.test", "duration": 0}, "duration"), ({"duration": "1h"}, "domain"),
                       ({"domain": "a.test", "duration": "1h", "reason": "x\ny"}, "reason")):  # fmt: skip
        status, out, _ = api.call("POST", "/api/v1/suspend", bad)
        assert status == 400 and out["field"] == field, (bad, out)
    status, out, _ = api.call(
        "POST", "/api/v1/suspend", {"domain": "A.test", "duration": "1h", "reason": "maint"}
    )
    assert status == 200 and out["domain"] == "a.test"
    _smtp(port, "held@a.test")
    _smtp(port, "free@b.test")
    other.wait_messages(1)
    wait_until(lambda: any("by the administrator: maint" in str(e.get("response"))
                           for e in s.srv.proc.events("deferred")), 30, "the deferral")  # fmt: skip
    assert box.rcpts() == []
    q = api.call("GET", "/api/v1/queue")[1]
    assert q["destinations"][0]["domain"] == "a.test" and q["destinations"][0]["suspended_until"]
    # a restart keeps the suspension
    s.srv.proc.stop()
    s.srv.proc = ServerProcess(s.srv.proc.config_path, (s.srv.host, port))
    s.srv.proc.wait_listening("127.0.0.1", s.srv.ports["http"])
    assert [x["domain"] for x in api.call("GET", "/api/v1/suspend")[1]["suspensions"]] == ["a.test"]
    _smtp(port, "new@a.test")
    time.sleep(2)
    assert box.rcpts() == []
    status, out, _ = api.call("DELETE", "/api/v1/suspend/a.test")
    assert status == 200 and out["lifted"]
    box.wait_messages(2)
    assert sorted(box.rcpts()) == ["held@a.test", "new@a.test"]
    assert api.call("DELETE", "/api/v1/suspend/a.test")[0] == 404


def test_api_on_two_workers_sees_and_writes_every_shard(
    workers_server: Callable[..., Supervised], tmp_path: Path
) -> None:
    token, tokens_file = write_tokens(tmp_path)
    http_port = free_port()
    srv = workers_server(hold=True, extra=f'[http]\naddress = "127.0.0.1:{http_port}"\n'
                         f'tokens_file = "{tokens_file}"\n'
                         f'[spool]\npath = "{tmp_path / "spool"}"\nmap_size = "64MiB"\n')  # fmt: skip
    srv.server.wait_listening("127.0.0.1", http_port)
    api = Api(f"http://127.0.0.1:{http_port}", token)
    ids = [i for n in range(20) for i in _inject(api, [f"r{n}@a.test"])]
    assert len(set(ids)) == 20
    for msg_id in ids:  # whichever worker answers reads every shard
        assert api.call("GET", f"/api/v1/messages/{msg_id}")[0] == 200
    assert api.call("GET", "/api/v1/queue")[1]["messages"] == 20
    assert api.call("POST", "/api/v1/suspend", {"domain": "a.test", "duration": "1h"})[0] == 200
    for _ in range(6):
        assert [x["domain"] for x in api.call("GET", "/api/v1/suspend")[1]["suspensions"]] == ["a.test"]
    for shard in ("0", "1"):  # the record is in each worker's shard: both schedulers apply it
        store = admin.open_store(SpoolConfig(path=str(tmp_path / "spool" / shard), map_size=64 * 1024**2))
        try:
            with store.read() as txn:
                assert list(suspend.load(txn.get(suspend.KEY, db=store.meta))) == ["a.test"]
        finally:
            store.close()


def test_tenants_suppressions_and_bounce_by_tenant(api_server: Callable[..., ApiServer]) -> None:
    s = api_server()
    api = s.api
    (mine,) = _inject(api, ["a@t.test"])
    doc = {"envelope_sender": "a@src.test", "recipients": [{"email": "b@t.test"}], "tenant": "shop",
           "content": "Subject: x\r\n\r\nhi\r\n"}  # fmt: skip
    status, out, _ = api.call("POST", INJECT, doc)
    assert status == 200, out
    (shops,) = out["ids"]
    assert s.srv.envelope(mine).tenant == "app"  # the token's name
    assert s.srv.envelope(shops).tenant == "shop"
    for bad, field in ((dict(doc, pool="nope"), "pool"), (dict(doc, tenant="a b"), "tenant")):
        status, out, _ = api.call("POST", INJECT, bad)
        assert status == 400 and out["field"] == field, out
    # the suppression list the scheduler and `fastmta suppress` use
    added = {"addresses": ["Bob@x.test", "c@x.test", "d@x.test"], "tenant": "shop", "reason": "asked to"}
    assert api.call("POST", "/api/v1/suppressions", added)[1] == {"added": 3}
    assert api.call("POST", "/api/v1/suppressions", {"address": "g@x.test"})[1] == {"added": 1}
    out = run_fastmta(
        "suppress", "check", "bob@x.test", "--tenant", "shop", "--config", str(s.srv.proc.config_path)
    )
    assert out.returncode == 0, out
    page = api.call("GET", "/api/v1/suppressions?tenant=shop&limit=2")[1]
    assert [e["address"] for e in page["suppressions"]] == ["bob@x.test", "c@x.test"] and page["next"]
    rest = api.call("GET", f"/api/v1/suppressions?tenant=shop&limit=2&after={page['next']}")[1]
    assert [e["address"] for e in rest["suppressions"]] == ["d@x.test"] and rest["next"] is None
    everything = api.call("GET", "/api/v1/suppressions")[1]["suppressions"]
    assert {(e["address"], e["tenant"]) for e in everything} == {
        ("g@x.test", None), ("bob@x.test", "shop"), ("c@x.test", "shop"), ("d@x.test", "shop")}  # fmt: skip
    assert everything[-1]["reason"] == "asked to" and everything[-1]["added"]
    assert api.call("DELETE", "/api/v1/suppressions?address=c@x.test&tenant=shop")[1] == {"removed": 1}
    assert api.call("DELETE", "/api/v1/suppressions", {"addresses": ["g@x.test", "zz@x.test"]})[1] == {
        "removed": 1
    }
    for method, path, body, field in (
        ("POST", "/api/v1/suppressions", {"addresses": []}, "addresses"),
        ("POST", "/api/v1/suppressions", {"addresses": ["no-at"]}, "addresses[0]"),
        ("POST", "/api/v1/suppressions", {"address": "a@x.test", "tenant": 5}, "tenant"),
        ("GET", "/api/v1/suppressions?limit=0", None, "limit"),
        ("GET", "/api/v1/suppressions?after=%%%", None, "after"),
    ):
        status, out, _ = api.call(method, path, body)
        assert status == 400 and out["field"] == field, (path, body, out)
    # bounce by tenant: only the shop's message
    assert api.call("POST", "/api/v1/bounce", {"tenant": "shop"})[1] == {"messages": 1}
    states = {i: api.call("GET", f"/api/v1/messages/{i}")[1]["recipients"][0]["state"] for i in (mine, shops)}
    assert states == {mine: "pending", shops: "bounce"}
