# SPDX-License-Identifier: MIT
"""``[[webhook]]`` changes applied by SIGHUP to a running ``fastmta serve``, no restart: a
changed URL and secret take over from the next POST with the cursor kept (nothing sent
again), a removed webhook gets nothing more, an added one starts, and a webhook section
added to a server that had none starts too."""

from __future__ import annotations

import hashlib
import hmac
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fixtures.http import WebhookReceiver, relay_config, send_each, webhook_table
from tests.fixtures.server import Running, config_text, serve_fastmta
from tests.fixtures.sink import Sink
from tests.support import wait_until

FAST = {"batch_size": "5", "max_delay": '"200ms"', "timeout": '"2s"'}


def _reload(srv: Running, tmp: Path, extra: str) -> None:
    n = srv.proc.stderr().count("configuration reloaded")
    srv.proc.config_path.write_text(config_text(tmp, srv.port, extra))
    srv.proc.signal(signal.SIGHUP)
    wait_until(lambda: srv.proc.stderr().count("configuration reloaded") > n, 30, "the reload")


def _rcpts(events: list[dict[str, Any]]) -> list[str]:
    return sorted(e["rcpt"] for e in events)


def _signed(hook: WebhookReceiver, secret: str) -> bool:
    return all(
        p.headers.get("X-Fastmta-Signature")
        == "sha256=" + hmac.new(secret.encode(), p.body, hashlib.sha256).hexdigest()
        for p in hook.posts
    )


def test_sighup_changes_url_and_secret_removes_and_adds_webhooks_keeping_cursors(
    tmp_path: Path,
    relay_box: Sink,
    sink_port: int,
    webhook_receiver: Callable[..., WebhookReceiver],
) -> None:
    old, moved, gone, added = (webhook_receiver() for _ in range(4))
    before = [f"b{i}@a.test" for i in range(3)]
    after = [f"n{i}@a.test" for i in range(4)]
    srv = serve_fastmta(tmp_path, relay_config(
        sink_port,
        webhook_table("app", old.url, secret='"one"', events='["delivered"]', **FAST),
        webhook_table("gone", gone.url, events='["delivered"]', **FAST),
    ))  # fmt: skip
    try:
        send_each(srv.host, srv.port, before)
        relay_box.wait_messages(3)
        assert _rcpts(old.wait_events(3)) == before and _rcpts(gone.wait_events(3)) == before
        _reload(srv, tmp_path, relay_config(
            sink_port,
            webhook_table("app", moved.url, secret='"two"', events='["delivered"]', **FAST),
            webhook_table("added", added.url, events='["delivered"]', **FAST),
        ))  # fmt: skip
        send_each(srv.host, srv.port, after)
        relay_box.wait_messages(7)
        assert _rcpts(moved.wait_events(4)) == after  # the cursor was kept: nothing sent twice
        assert set(after) <= set(_rcpts(added.wait_events(4)))  # from the oldest event still kept
        time.sleep(1.0)  # max_delay five times over: anything misrouted would have arrived
        assert _rcpts(old.events()) == before and _rcpts(gone.events()) == before
        assert _rcpts(moved.events()) == after
        assert _signed(old, "one") and _signed(moved, "two") and not _signed(moved, "one")
        assert "Traceback" not in srv.proc.stderr()
    finally:
        srv.proc.stop()


def test_sighup_starts_webhooks_on_a_server_that_had_none(
    tmp_path: Path,
    relay_box: Sink,
    sink_port: int,
    webhook_receiver: Callable[..., WebhookReceiver],
) -> None:
    hook = webhook_receiver()
    srv = serve_fastmta(tmp_path, relay_config(sink_port))
    try:
        send_each(srv.host, srv.port, ["early@a.test"])
        relay_box.wait_messages(1)
        _reload(srv, tmp_path, relay_config(sink_port, webhook_table("late", hook.url, **FAST)))
        send_each(srv.host, srv.port, ["late@a.test"])
        relay_box.wait_messages(2)
        events = hook.wait_events(1)
        assert [e["rcpt"] for e in events if e["event"] == "delivered"] == ["late@a.test"]
    finally:
        srv.proc.stop()
