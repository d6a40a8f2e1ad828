# SPDX-License-Identifier: MIT
"""The shared suppression list across real ``fastmta serve`` nodes, one real Redis, real clients.

Each node is a one-node group behind its own HAProxy (so a test can mail a chosen
node) with the HTTP API on; changes come from the API, ``fastmta suppress`` and a hard
bounce, and show as ``suppressed`` log lines on the other nodes. Redis killed (it
comes back empty) or stalled: nothing is lost, nothing waits for it. Tests ask for
``redis_server`` before ``members`` so that Redis outlives the nodes at teardown.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.http import Api, write_tokens
from tests.fixtures.pools import message, send
from tests.fixtures.redis import RedisServer
from tests.integration.test_cluster_nodes import metric
from tests.support import free_port, run_fastmta, wait_until

pytestmark = pytest.mark.timeout(180)

SENDER = "shop@src.test"


class Member:
    """A node of the test cluster: its process, the HAProxy port in front of it, its API."""

    def __init__(self, start: Callable[..., Any], url: str, nexthop: int, token: str, tokens: Path,
                 extra: str = "") -> None:  # fmt: skip
        api_port = free_port()
        http = f'[http]\naddress = "127.0.0.1:{api_port}"\ntokens_file = "{tokens}"\n'
        (self.node,), self.front = start(1, url, nexthop, extra=http + extra)
        self.api = Api(f"http://127.0.0.1:{api_port}", token)
        self.node.proc.wait_listening("127.0.0.1", api_port)

    def suppress(self, *args: str) -> int:
        return run_fastmta("suppress", *args, "--config", str(self.node.config_path)).returncode

    def holds(self, addr: str) -> bool:
        return self.suppress("check", addr) == 0

    def mail(self, *rcpts: str) -> None:
        send(self.front, SENDER, list(rcpts), message(SENDER, rcpts[0]))

    def events(self, event: str, rcpt: str) -> list[dict[str, Any]]:
        return [e for e in self.node.proc.events(event) if e["rcpt"] == rcpt]

    def count(self) -> int:
        out = run_fastmta("suppress", "list", "--config", str(self.node.config_path)).stdout
        return len(out.splitlines())


@pytest.fixture
def members(tmp_path: Path, cluster: Callable[..., Any], sinks: Callable[..., Any]) -> Callable[..., Member]:
    """Factory: ``members(redis_url, extra=TOML) -> Member``, every one relaying to one sink."""
    port = free_port()
    sinks("127.0.0.1", port, rcpt={"nouser@dst.test": "550 5.1.1 No such user"})
    token, tokens = write_tokens(tmp_path, "ops")

    def start(url: str, extra: str = "") -> Member:
        return Member(cluster, url, port, token, tokens, extra)

    return start


def test_a_suppression_made_on_one_node_holds_on_every_node(
    redis_server: Callable[[], RedisServer], members: Callable[..., Member]
) -> None:
    url = redis_server().url
    a, b = members(url), members(url, "[server]\nworkers = 2\n")
    status, doc, _ = a.api.call(
        "POST", "/api/v1/suppressions", {"address": "Gone@dst.test", "reason": "asked"}
    )
    assert (status, doc) == (200, {"added": 1})
    wait_until(lambda: b.holds("gone@dst.test"), 30, "the API's entry on node b")
    b.mail("gone@dst.test", "here@dst.test")
    wait_until(lambda: b.events("suppressed", "gone@dst.test") and b.events("delivered", "here@dst.test"), 30)
    # a hard bounce on b suppresses the address on a (b runs two workers: any may see it)
    b.mail("nouser@dst.test")
    wait_until(lambda: a.holds("nouser@dst.test"), 30, "the bounce's entry on node a")
    # lifted with the command on b (its server publishes it): a delivers again
    assert b.suppress("remove", "gone@dst.test") == 0
    wait_until(lambda: not a.holds("gone@dst.test"), 30, "the removal on node a")
    a.mail("gone@dst.test")
    wait_until(lambda: a.events("delivered", "gone@dst.test"), 30, "delivery on node a")
    assert metric(a.node, "fastmta_cluster_suppression_in_sync") == 1


def test_redis_killed_or_stalled_loses_no_suppression_and_holds_up_nothing(
    redis_server: Callable[[], RedisServer], members: Callable[..., Member]
) -> None:
    r = redis_server()
    a, b = members(r.url), members(r.url)
    wait_until(lambda: all(metric(m.node, "fastmta_cluster_suppression_in_sync") == 1 for m in (a, b)), 30)
    r.kill()
    assert a.api.call("POST", "/api/v1/suppressions", {"address": "down@dst.test"})[0] == 200
    a.mail("down@dst.test")  # a suppresses it at once, on its own copy
    wait_until(lambda: a.events("suppressed", "down@dst.test"), 30, "suppressed on node a")
    wait_until(lambda: metric(a.node, "fastmta_cluster_suppression_outbox") == 1, 30, "a's outbox")
    assert metric(a.node, "fastmta_cluster_suppression_in_sync") == 0
    assert not b.holds("down@dst.test")
    assert "suppression list out of sync" in a.node.proc.stderr()
    r.start()  # empty: the nodes fill it again from their lists
    wait_until(lambda: b.holds("down@dst.test"), 30, "node b after Redis came back")
    wait_until(lambda: all(metric(m.node, "fastmta_cluster_suppression_in_sync") == 1 for m in (a, b)), 30)
    r.stall()
    try:
        t0 = time.monotonic()
        assert a.api.call("POST", "/api/v1/suppressions", {"address": "stalled@dst.test"})[0] == 200
        assert b.api.call("GET", "/api/v1/suppressions")[0] == 200
        assert time.monotonic() - t0 < 2  # neither waits for Redis
        b.mail("fine@dst.test")
        wait_until(lambda: b.events("delivered", "fine@dst.test"), 30, "a delivery while Redis is stalled")
        assert not b.holds("stalled@dst.test")
    finally:
        r.resume()
    wait_until(lambda: b.holds("stalled@dst.test"), 30, "node b after Redis resumed")


def test_a_node_started_later_gets_the_whole_list(
    redis_server: Callable[[], RedisServer], members: Callable[..., Member]
) -> None:
    url = redis_server().url
    a, b = members(url), members(url)
    n = 10_000
    addrs = [f"user{i}@bulk.test" for i in range(n)]
    t0 = time.monotonic()
    assert a.api.call("POST", "/api/v1/suppressions", {"addresses": addrs})[1] == {"added": n}
    wait_until(lambda: b.count() == n, 60, f"{n} entries on node b")
    spread = time.monotonic() - t0
    t1 = time.monotonic()
    c = members(url)
    wait_until(lambda: c.count() == n, 60, f"{n} entries on node c")
    joined = time.monotonic() - t1
    c.mail("user9999@bulk.test")
    wait_until(lambda: c.events("suppressed", "user9999@bulk.test"), 30, "suppressed on node c")
    [synced] = [ln for ln in c.node.proc.stderr().splitlines() if "suppression list reconciled" in ln]
    print(f"\n{n} entries: on a running node {spread:.2f}s after the API call;"
          f" on a new node {joined:.2f}s after its start ({synced.split('cluster: ')[-1]})")  # fmt: skip
