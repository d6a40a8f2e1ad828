# SPDX-License-Identifier: MIT
"""Several real nodes behind a real HAProxy, one real Redis, one recording sink as the receiver.

The receiver's rules are what must hold across the nodes: at most 2 connections
(the sink's ``peak_open``), at most 50 messages a second, "back off now" (a shaping
suspension seen by one node holds on all). Without Redis each node keeps its own 2.
Redis that dies falls back to each node's share, or pauses; draining a node moves
its mail to another. The 60-second hold check is in bench/cluster.py.
"""

from __future__ import annotations

import json
import smtplib
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from tests.fixtures.cluster import Node
from tests.fixtures.redis import RedisServer
from tests.integration.test_queue_cli import listed, q
from tests.support import free_port, wait_until

pytestmark = pytest.mark.timeout(120)

LIMITS = """
max_connections_per_destination = 2
message_rate_per_destination = 50
"""


def send(front: int, n: int, tag: str, threads: int = 6) -> None:
    """``n`` messages through HAProxy, over several connections (so every node gets some)."""

    def worker(k: int) -> None:
        with smtplib.SMTP("127.0.0.1", front, timeout=30) as c:
            for i in range(k, n, threads):
                c.sendmail(f"s@{tag}.src.test", [f"r{i}@dst.test"], f"Subject: {tag} {i}\r\n\r\nhi\r\n")

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)


def delivered_by(nodes: list[Node]) -> dict[str, int]:
    return {nd.name: len(nd.proc.events("delivered")) for nd in nodes}


def metric(node: Node, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "node-local"])
def test_destination_limits_hold_across_nodes(
    cluster: Callable[..., Any],
    redis_server: Callable[[], RedisServer],
    sinks: Callable[..., Any],
    shared: bool,
) -> None:
    port = free_port()
    sink = sinks("127.0.0.1", port, delay=0.005)
    nodes, front = cluster(3, redis_server().url if shared else "", port, LIMITS)
    n = 150
    send(front, n, "lim")
    t0 = time.monotonic()
    sink.wait_messages(n, timeout=60)
    took = time.monotonic() - t0
    per_node = delivered_by(nodes)
    assert all(v > 0 for v in per_node.values()), per_node  # HAProxy spread the mail
    if shared:
        assert sink.peak_open <= 2, sink.peak_open
        # 50/s cluster-wide (plus one batch: a tenth of a second's worth per node): ≥ 2.4 s;
        # and not far below it: a lease kept idle by one node would stall the others
        assert (n - 3 * 5) / 50 * 0.9 <= took <= n / 50 * 1.6 + 1, took
        assert metric(nodes[0], "fastmta_cluster_nodes") == 3
        assert metric(nodes[0], "fastmta_cluster_redis_up") == 1
        assert {json.loads(line)["node"] for nd in nodes for line in nd.proc.log_lines()} == {
            "node1", "node2", "node3"
        }  # fmt: skip
    else:
        assert sink.peak_open > 2, sink.peak_open  # each node alone keeps its own 2


def test_an_idle_lease_keeps_its_connection(
    cluster: Callable[..., Any], redis_server: Callable[[], RedisServer], sinks: Callable[..., Any]
) -> None:
    """Between two bursts a worker keeps its lease and its pooled connection (for the pool's
    ``idle_timeout``, 1 s here): no new lease, no new connection; past it both go back."""
    port = free_port()
    sink = sinks("127.0.0.1", port)
    redis = redis_server()
    _, front = cluster(1, redis.url, port, "max_connections_per_destination = 1\n")
    key = f"fastmta:conn:[127.0.0.1]:{port}"
    send(front, 3, "first", threads=1)
    sink.wait_messages(3, timeout=30)
    time.sleep(0.6)  # idle, well within idle_timeout
    assert redis.command("ZCARD", key) == b":1\r\n"  # the lease is still held
    send(front, 3, "second", threads=1)
    sink.wait_messages(6, timeout=30)
    assert sink.connections == 1  # the second burst went over the first burst's connection
    wait_until(lambda: redis.command("ZCARD", key) == b":0\r\n", 10, "the idle lease going back")
    wait_until(lambda: sink.open_now == 0, 5, "its connection closed")


def test_a_shaping_suspension_holds_on_every_node(
    cluster: Callable[..., Any], redis_server: Callable[[], RedisServer], sinks: Callable[..., Any]
) -> None:
    port = free_port()
    sink = sinks("127.0.0.1", port, rcpt_default="451 4.7.28 TSS04 slow down")
    shaping = LIMITS + '[[delivery.shaping]]\nmatch = "TSS04"\naction = "suspend"\nduration = "1h"\n'
    nodes, front = cluster(2, redis_server().url, port, shaping)
    send(front, 1, "first", threads=1)  # one node meets the TSS04 and suspends the destination
    wait_until(lambda: sum(len(nd.proc.events("deferred")) for nd in nodes) == 1, 30, "the first deferral")
    time.sleep(0.6)  # three heartbeats
    tried = len(sink.commands)
    send(front, 6, "later", threads=2)  # both nodes get some: neither may try
    wait_until(lambda: sum(len(nd.proc.events("deferred")) for nd in nodes) == 7, 30, "six more deferrals")
    assert len(sink.commands) == tried  # no node connected again
    later = [e for nd in nodes for e in nd.proc.events("deferred")][1:]
    assert all("suspended" in e["response"] for e in later if e["from"].endswith("later.src.test"))
    assert {e["node"] for nd in nodes for e in nd.proc.events("deferred")} == {"node1", "node2"}


@pytest.mark.parametrize("mode", ["local", "pause"])
def test_redis_failure_falls_back_as_configured(
    cluster: Callable[..., Any], redis_server: Callable[[], RedisServer], sinks: Callable[..., Any], mode: str
) -> None:
    port = free_port()
    sink = sinks("127.0.0.1", port, delay=0.01)
    redis = redis_server()
    nodes, front = cluster(2, redis.url, port, LIMITS, f'on_redis_failure = "{mode}"')
    wait_until(lambda: metric(nodes[0], "fastmta_cluster_nodes") == 2, 30, "both nodes seen")
    redis.kill()
    wait_until(lambda: all(metric(nd, "fastmta_cluster_fallback") == 1 for nd in nodes), 30, "fallback")
    send(front, 40, "down")
    if mode == "local":
        sink.wait_messages(40, timeout=60)
        assert sink.peak_open <= 2  # each node keeps to 2 / 2 nodes = 1
        assert all("falling back to this node's share" in nd.proc.stderr() for nd in nodes)
    else:
        time.sleep(2)
        assert sink.messages == []  # held in the spools
        assert all("deliveries paused" in nd.proc.stderr() for nd in nodes)
    redis.start()
    sink.wait_messages(40, timeout=60)
    wait_until(lambda: all(metric(nd, "fastmta_cluster_redis_up") == 1 for nd in nodes), 30, "Redis back")
    assert all("Redis answers again" in nd.proc.stderr() for nd in nodes)
    assert sorted(r for m in sink.messages for r in m.rcpt_tos) == sorted(f"r{i}@dst.test" for i in range(40))


def test_draining_a_node_moves_all_its_mail(
    cluster: Callable[..., Any], redis_server: Callable[[], RedisServer], sinks: Callable[..., Any]
) -> None:
    port = free_port()
    sink = sinks("127.0.0.1", port)
    url = redis_server().url
    (held,), held_front = cluster(1, url, port, "hold = true\n")  # being retired: delivers nothing
    (live,), live_front = cluster(1, url, port)
    n = 25
    send(held_front, n, "drain")
    wait_until(lambda: len(listed(held.config_path)) == n, 30, "mail queued on the retiring node")
    # to the balancer: the nodes' own listeners expect its PROXY header
    rc, _, err = q(held.config_path, "transfer", "--to", f"127.0.0.1:{live_front}")
    assert rc == 0, err
    sink.wait_messages(n, timeout=60)
    assert listed(held.config_path) == {}
    assert len(live.proc.events("delivered")) == n
