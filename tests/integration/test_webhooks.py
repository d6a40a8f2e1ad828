# SPDX-License-Identifier: MIT
"""``[[webhook]]`` end to end: a real ``fastmta serve`` relaying to an aiosmtpd sink, and a
webhook receiver that fails, stalls, is down, or comes back after a ``kill -9``.

At-least-once: every delivery-log event the webhook asked for arrives (duplicates
allowed), the events of one message in the order they happened.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable

from tests.fixtures.http import WEBHOOK_SECRET, WebhookRelay, send_each
from tests.fixtures.server import Running
from tests.support import ServerProcess, run_fastmta, wait_until


def _logged(proc: ServerProcess, events: tuple[str, ...]) -> list[tuple[str, str, int]]:
    return [(r["id"], r["event"], r["attempt"]) for r in proc.events() if r["event"] in events]


def _queued(srv: Running) -> int:
    stats = run_fastmta("queue", "stats", "--json", "--config", str(srv.proc.config_path))
    return int(json.loads(stats.stdout)["messages"])


def test_failing_webhook_gets_every_event_signed_in_batches_once_it_answers(
    webhook_relay: Callable[..., WebhookRelay],
) -> None:
    box, hook, srv = webhook_relay(mode="fail")
    send_each(srv.host, srv.port, [f"u{i}@a.test" for i in range(12)])
    box.wait_messages(12)
    wait_until(lambda: len(_logged(srv.proc, ("delivered",))) == 12, 30, "12 delivered lines")
    wait_until(lambda: hook.attempts >= 2, 30, "retried POSTs")
    assert hook.posts == []
    hook.mode = "ok"
    events = hook.wait_events(12)
    assert [len(p.events) for p in hook.posts] == [5, 5, 2]  # batch_size, at and below the edge
    for p in hook.posts:
        want = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), p.body, hashlib.sha256).hexdigest()
        assert p.headers["X-Fastmta-Signature"] == want
    assert sorted((e["id"], e["event"]) for e in events) == sorted(
        (i, ev) for i, ev, _ in _logged(srv.proc, ("delivered",))
    )
    assert {e["rcpt"] for e in events} == {f"u{i}@a.test" for i in range(12)}
    assert all(e["code"] == 250 and e["nexthop"] for e in events)
    time.sleep(1.5)  # acknowledged: never sent again, the journal is pruned without an error
    assert len(hook.posts) == 3 and "Traceback" not in srv.proc.stderr()


def test_stalled_webhook_times_out_and_is_retried(webhook_relay: Callable[..., WebhookRelay]) -> None:
    _, hook, srv = webhook_relay(mode="stall")
    send_each(srv.host, srv.port, ["s1@a.test", "s2@a.test"])
    wait_until(lambda: hook.attempts >= 2, 60, "a second POST after the first timed out")
    # a stalled webhook never holds delivery up
    assert len(_logged(srv.proc, ("delivered",))) == 2
    hook.mode = "ok"
    assert {e["rcpt"] for e in hook.wait_events(2)} == {"s1@a.test", "s2@a.test"}


def test_kill_9_before_the_post_the_event_arrives_after_restart(
    webhook_relay: Callable[..., WebhookRelay],
) -> None:
    box, hook, srv = webhook_relay(start=False)  # down: connection refused
    send_each(srv.host, srv.port, ["k1@a.test", "k2@a.test", "k3@a.test"])
    box.wait_messages(3)
    wait_until(lambda: len(_logged(srv.proc, ("delivered",))) == 3, 30, "3 delivered lines")
    delivered = {i for i, _, _ in _logged(srv.proc, ("delivered",))}
    # the log line may come a group commit before the state change is on disk
    wait_until(lambda: _queued(srv) == 0, 30, "the deliveries committed")
    srv.proc.kill9()
    hook.start()
    again = ServerProcess(srv.proc.config_path, (srv.host, srv.port))
    try:
        events = hook.wait_events(3)
        assert {e["id"] for e in events if e["event"] == "delivered"} == delivered
        assert len(box.messages) == 3  # nothing was delivered twice: the state change was durable
    finally:
        again.stop()


def test_webhook_down_for_a_while_gets_every_event_in_order_per_message(
    webhook_relay: Callable[..., WebhookRelay],
) -> None:
    rcpts = [f"d{i}@a.test" for i in range(6)]
    deferring = {"rcpt_default": "451 4.7.1 try again later"}
    box, hook, srv = webhook_relay(start=False, sink=deferring, batch_size="4")
    send_each(srv.host, srv.port, rcpts)
    wait_until(lambda: len(_logged(srv.proc, ("deferred",))) >= 6, 30, "first attempts deferred")
    box.script.rcpt_default = None
    box.wait_messages(6, 60)
    wait_until(lambda: len(_logged(srv.proc, ("delivered",))) == 6, 30, "6 delivered lines")
    time.sleep(1.5)  # the sender retried against the dead port meanwhile
    hook.start()
    logged = _logged(srv.proc, ("deferred", "delivered"))
    hook.wait_events(len(logged))
    got = [(e["id"], e["event"], e["attempt"]) for e in hook.events()]
    assert set(got) == set(logged)  # none missing (duplicates would be allowed)
    for msg_id in {i for i, _, _ in logged}:
        assert [g for g in got if g[0] == msg_id] == [x for x in logged if x[0] == msg_id]
