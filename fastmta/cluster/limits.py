# SPDX-License-Identifier: MIT
"""Per-destination limits held with the other nodes of a cluster, through one Redis.

``Cluster`` is the scheduler's ``SharedLimits``. A connection slot is a lease in a
sorted set (member ``node:n``, score = expiry), held by one delivery worker for its
life; the worker closes its destination's idle pooled connections before giving it
back, since a receiver counts open connections. A worker keeps its lease, and its
connection, while it waits for more work, until another node is refused a lease of
the destination: the refusal raises a want flag that the holders read at their next
heartbeat, and then give leases back as the old connections end. A node that dies
stops renewing and its leases lapse after ``lease_ttl``. Message rates are a GCRA bucket taken in
batches sized to the node's pace (``batch_size``). Suspensions and shaping limits are hashes the heartbeat
polls. None of this costs a Redis round trip per message: a lease lasts a worker's
life, tokens come in batches, and the heartbeat renews every lease in one pipeline.

When Redis fails (an error, or no answer within ``timeout``) a node falls back to its
share of each limit (limit / nodes last seen, at least 1) or, with
``on_redis_failure = "pause"``, starts nothing until Redis answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from fastmta import metrics
from fastmta.cluster import lua
from fastmta.config import ClusterConfig
from fastmta.errors import Reply

log = logging.getLogger("fastmta.cluster")

DENIED_WAIT = 0.1  # seconds before a node asks again for a lease it was refused
# after giving a lease back, a node waits this long before asking for the destination
# again: nodes that were refused meanwhile (asking every DENIED_WAIT) get their turn
YIELD = 0.15
TOKEN_LIFE = 1.0  # seconds a node may keep rate tokens it has not spent
BATCH_SPAN = 0.1  # a batch of rate tokens lasts this long at the node's pace, and at most at the limit
BATCH_BASE = 20  # tokens a batch has at least (when the limit allows): what a slow node takes
NODE_HORIZON_MS = 60_000  # a node counts as present while its heartbeat is this recent

T = TypeVar("T")
# What the heartbeat hands the scheduler: dest → (seconds left, reply, bounce class) and
# dest → (seconds left, connections, rate).
Suspensions = dict[str, tuple[float, Reply, str]]
Limits = dict[str, tuple[float, int, float]]
StateCallback = Callable[[Suspensions, Limits], None]


class _Dest:
    """This node's leases and unspent tokens for one destination."""

    __slots__ = ("held", "tokens", "tokens_until", "local_next", "released", "asking", "wanted",
                 "acquiring", "members", "opening", "took", "took_at")  # fmt: skip

    def __init__(self) -> None:
        self.held: list[str] = []  # lease members this node holds, one per delivery worker
        self.tokens = 0
        self.tokens_until = 0.0
        self.local_next = 0.0  # fallback: next message start under this node's rate share
        self.released = 0.0  # when this node last gave a lease of it back
        self.asking: asyncio.Future[float] | None = None  # a batch of tokens being asked for
        self.wanted = False  # another node was refused a lease of it (as of the last heartbeat)
        self.acquiring: asyncio.Future[set[str] | None] | None = None  # an ACQUIRE being gathered
        self.members: list[str] = []  # the lease members it asks for
        self.opening = 0  # open() calls under way (the heartbeat keeps the entry meanwhile)
        self.took = 0  # tokens in the last batch taken, and when (monotonic)
        self.took_at = 0.0


class Cluster:
    """Shared limits for one node; ``start`` it after the loop runs, ``close`` at shutdown."""

    def __init__(self, cfg: ClusterConfig, client: aioredis.Redis | None = None) -> None:
        self.cfg = cfg
        self.node = cfg.node_id
        self.redis = client or aioredis.from_url(
            cfg.redis,
            socket_timeout=cfg.timeout,
            socket_connect_timeout=cfg.timeout,
            retry=Retry(NoBackoff(), 0),
        )
        p = cfg.prefix
        self._nodes_key, self._suspend_key, self._limit_key = p + "nodes", p + "suspend", p + "limit"
        self._acquire = self.redis.register_script(lua.ACQUIRE)
        self._renew = self.redis.register_script(lua.RENEW)
        self._take = self.redis.register_script(lua.TAKE)
        self._hold = self.redis.register_script(lua.HOLD)
        self._tick = self.redis.register_script(lua.TICK)
        self._ttl_ms = int(cfg.lease_ttl * 1000)
        # a refused node asks again every DENIED_WAIT; holders look at every heartbeat
        self._want_ms = int(2 * cfg.interval * 1000)
        self._dests: dict[str, _Dest] = {}
        self._serial = 0
        self.up = True  # believed reachable until a call fails
        self._reregister = False  # leases were taken while Redis was away: the next renewal adds them
        self.nodes = 1  # nodes seen in the last minute (the fallback divides limits by it)
        self.on_state: StateCallback | None = None
        self._task: asyncio.Task[None] | None = None
        self._spawned: set[asyncio.Task[Any]] = set()
        self._m_up = metrics.cluster_redis_up.labels(self.node)
        self._m_fallback = metrics.cluster_fallback.labels(self.node)
        self._m_nodes = metrics.cluster_nodes.labels(self.node)
        self._m_leases = metrics.cluster_leases.labels(self.node)
        self._m_errors = metrics.cluster_redis_errors_total.labels(self.node)
        self._m_up.set(1)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """First heartbeat (so the node count is known), then one every ``interval``."""
        await self.heartbeat()
        self._task = asyncio.get_running_loop().create_task(self._beat())

    async def close(self) -> None:
        """Stop the heartbeat and give back every lease (other nodes need not wait for the TTL)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.up:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key, d in self._dests.items():
                    if d.held:
                        pipe.zrem(self._conn_key(key), *d.held)
                pipe.zrem(self._nodes_key, self.node)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pipe.execute(), self.cfg.timeout)
        self._dests.clear()
        with contextlib.suppress(Exception):
            await self.redis.aclose()

    @property
    def paused(self) -> bool:
        """Redis is away and the configuration says to hold deliveries until it is back."""
        return not self.up and self.cfg.on_redis_failure == "pause"

    # --- connection leases ------------------------------------------------------------------

    async def open(self, key: str, limit: int) -> float:
        """0: this node may run one more connection to ``key`` (a lease covers it);
        else the seconds to wait before asking again."""
        d = self._dests.get(key)
        if d is None:
            d = self._dests[key] = _Dest()
        if self.paused:
            return self.cfg.interval
        since = time.monotonic() - d.released
        if since < YIELD:
            return YIELD - since
        member = self._member()
        if self.up:
            d.opening += 1
            try:
                granted = await self._acquire_one(d, key, limit, member)
            except _Down:
                return await self.open(key, limit)
            finally:
                d.opening -= 1
            if not granted:
                return DENIED_WAIT
        elif len(d.held) >= max(1, limit // self.nodes):
            return DENIED_WAIT
        d.held.append(member)
        self._m_leases.inc()
        return 0.0

    async def _acquire_one(self, d: _Dest, key: str, limit: int, member: str) -> bool:
        """Ask for a lease; the workers started in one step of the loop (a burst of new work
        starts many at once) ask in one ACQUIRE: one round trip, not one Redis connection each."""
        d.members.append(member)
        if d.acquiring is not None:
            granted = await asyncio.shield(d.acquiring)
        else:
            d.acquiring = asked = asyncio.get_running_loop().create_future()
            granted = None
            try:
                await asyncio.sleep(0)  # the other workers of this step add their members
                members, d.members, d.acquiring = d.members, [], None
                got = await self._call(
                    self._acquire(
                        keys=[self._conn_key(key), self._want_key(key)],
                        args=[limit, self._ttl_ms, self._want_ms, *members],
                    )
                )
                granted = {_text(m) for m in got}
            finally:
                if d.acquiring is asked:
                    d.members, d.acquiring = [], None
                asked.set_result(granted)  # None: Redis failed
        if granted is None:
            raise _Down
        return member in granted

    def close_slot(self, key: str) -> None:
        """A worker that held a lease of ``key`` ended (its connections are closed): give it back."""
        d = self._dests.get(key)
        if d is None or not d.held:
            return
        member = d.held.pop()
        self._m_leases.dec()
        d.released = time.monotonic()
        if self.up:
            self._spawn(self._call(self.redis.zrem(self._conn_key(key), member)))

    def leases(self, key: str) -> int:
        d = self._dests.get(key)
        return len(d.held) if d is not None else 0

    def wanted(self, key: str) -> bool:
        """Another node was refused a lease of ``key`` lately: leases should go back for turns."""
        d = self._dests.get(key)
        return d is not None and d.wanted

    # --- message rate -------------------------------------------------------------------------

    async def token(self, key: str, rate: float) -> float:
        """0: one message to ``key`` may start now; else the seconds to wait before asking again."""
        if rate <= 0:
            return self.cfg.interval if self.paused else 0.0
        d = self._dests.get(key)
        if d is None:
            d = self._dests[key] = _Dest()
        now = time.monotonic()
        if d.tokens > 0 and now < d.tokens_until:
            d.tokens -= 1
            return 0.0
        if self.paused:
            return self.cfg.interval
        if not self.up:
            if now < d.local_next:
                return d.local_next - now
            d.local_next = max(now, d.local_next) + self.nodes / rate
            return 0.0
        if d.asking is not None:  # one ask per node and destination at a time: share its answer
            wait = await asyncio.shield(d.asking)
            return wait if wait > 0 else await self.token(key, rate)
        d.asking = asking = asyncio.get_running_loop().create_future()
        wait = 0.0
        try:
            wait = await self._take_batch(d, key, rate)
        except _Down:
            pass  # wait 0: ask again, and meet the fallback
        finally:
            d.asking = None
            asking.set_result(wait)
        return wait if wait > 0 else await self.token(key, rate)

    async def _take_batch(self, d: _Dest, key: str, rate: float) -> float:
        """A batch of tokens into the node's stash; 0, or the seconds until a whole batch is there."""
        now = time.monotonic()
        n = batch_size(d.took - d.tokens, now - d.took_at, d.took, rate, self.cfg.batch)
        k, wait_us = await self._call(
            self._take(keys=[self._rate_key(key)], args=[math.ceil(1e6 / rate), n, n])
        )
        if k <= 0:
            return max(int(wait_us) / 1e6, 0.001)
        d.tokens = d.took = int(k)
        d.took_at = time.monotonic()
        d.tokens_until = d.took_at + TOKEN_LIFE
        return 0.0

    # --- suspensions and shaping limits -----------------------------------------------------------

    def suspend(self, key: str, seconds: float, reply: Reply, bounce_class: str) -> None:
        """Suspend ``key`` on every node for ``seconds`` (a later end wins)."""
        text = reply.text.replace("\n", " ")
        rest = f"{reply.code} {reply.enhanced or '-'} {bounce_class} {text}"
        self._publish(self._suspend_key, key, seconds, rest)

    def limit(self, key: str, seconds: float, connections: int, rate: float) -> None:
        """Lower ``key``'s connections and rate on every node for ``seconds``."""
        self._publish(self._limit_key, key, seconds, f"{connections} {rate}")

    def resume(self, key: str) -> None:
        """End ``key``'s suspension on every node (each lifts it at its next heartbeat)."""
        if self.up:
            self._spawn(self._call(self.redis.hdel(self._suspend_key, key)))

    def _publish(self, hkey: str, key: str, seconds: float, rest: str) -> None:
        if self.up:
            self._spawn(self._call(self._hold(keys=[hkey], args=[key, int(seconds * 1000), rest])))

    # --- heartbeat ------------------------------------------------------------------------------

    async def heartbeat(self) -> None:
        """Announce this node, renew its leases, read the node count, suspensions and limits."""
        now = time.monotonic()
        idle = [k for k, d in self._dests.items() if not d.held and not d.opening and d.asking is None
                and now > d.released + YIELD and now > max(d.tokens_until, d.local_next)]  # fmt: skip
        for key in idle:  # nothing worth keeping: the dict does not grow with every domain
            del self._dests[key]
        readd = self._reregister  # after an outage: register the leases taken meanwhile
        mode = "" if readd else "XX"
        # "async with": a pipeline whose execute timed out (a stalled Redis) still holds its
        # connection, and one left to the garbage collector is reported as unclosed
        async with self.redis.pipeline(transaction=False) as pipe:
            await self._tick(
                keys=[self._nodes_key, self._suspend_key, self._limit_key],
                args=[self.node, NODE_HORIZON_MS],
                client=pipe,
            )
            renewed = [(key, d) for key, d in self._dests.items() if d.held]
            for key, d in renewed:
                await self._renew(
                    keys=[self._conn_key(key), self._want_key(key)],
                    args=[self._ttl_ms, mode, *d.held],
                    client=pipe,
                )
            try:
                results = await self._call(pipe.execute(), probe=True)
            except _Down:
                return
        if readd:
            self._reregister = False
        for d in self._dests.values():
            d.wanted = False
        for (_, d), want in zip(renewed, results[1:], strict=True):
            d.wanted = bool(want)
        nodes, suspended, limited = results[0]
        self.nodes = max(1, int(nodes))
        self._m_nodes.set(self.nodes)
        if self.on_state is not None:
            self.on_state(_suspensions(suspended), _limits(limited))

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.interval)
            try:
                await self.heartbeat()
            except Exception:  # the heartbeat must outlive any one bad answer
                log.exception("cluster heartbeat failed")

    # --- Redis calls and failure ------------------------------------------------------------------

    async def _call(self, aw: Awaitable[T], probe: bool = False) -> T:
        """One Redis call under ``timeout``; a failure switches to the fallback (``_Down``).
        Only the heartbeat (``probe``) may find Redis back."""
        try:
            result = await asyncio.wait_for(aw, self.cfg.timeout)
        except (TimeoutError, aioredis.RedisError, OSError) as e:
            self._m_errors.inc()
            self._set_up(False, e)
            raise _Down from None
        if probe:
            self._set_up(True)
        return result

    def _set_up(self, up: bool, why: BaseException | None = None) -> None:
        if up == self.up:
            return
        self.up = up
        if not up:
            self._reregister = True
        self._m_up.set(1 if up else 0)
        self._m_fallback.set(0 if up else 1)
        if up:
            log.warning("cluster: Redis answers again; limits are cluster-wide again")
        elif self.cfg.on_redis_failure == "pause":
            log.warning("cluster: Redis unreachable (%s); deliveries paused until it is back", _why(why))
        else:
            log.warning(
                "cluster: Redis unreachable (%s); falling back to this node's share of each limit (1/%d)",
                _why(why),
                self.nodes,
            )

    # --- helpers --------------------------------------------------------------------------------

    def _member(self) -> str:
        self._serial += 1
        return f"{self.node}:{self._serial}"

    def _conn_key(self, key: str) -> str:
        return f"{self.cfg.prefix}conn:{key}"

    def _want_key(self, key: str) -> str:
        return f"{self.cfg.prefix}want:{key}"

    def _rate_key(self, key: str) -> str:
        return f"{self.cfg.prefix}rate:{key}"

    def _spawn(self, aw: Awaitable[Any]) -> None:
        async def run() -> None:
            with contextlib.suppress(_Down):
                await aw

        task = asyncio.get_running_loop().create_task(run())
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)


def batch_size(spent: int, elapsed: float, last: int, rate: float, most: int) -> int:
    """Rate tokens to ask for: ``BATCH_SPAN`` at the pace the last batch was spent (``spent``
    of ``last`` tokens in ``elapsed`` seconds; the rest lapsed), growing at most twofold per
    batch, and at least ``BATCH_BASE``; never more than ``most`` nor than ``BATCH_SPAN`` of
    the ``rate`` limit, so a node holds at most a tenth of a second's worth. At least 1."""
    grown = min(math.ceil(spent / max(elapsed, 0.001) * BATCH_SPAN), 2 * last)
    return max(1, min(most, math.ceil(rate * BATCH_SPAN), max(BATCH_BASE, grown)))


class _Down(Exception):
    """Redis did not answer: the caller takes the fallback path."""


def _why(e: BaseException | None) -> str:
    if isinstance(e, asyncio.TimeoutError):
        return "no answer in time"
    return f"{type(e).__name__}: {e}" if e is not None else "unknown"


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _triples(flat: list[Any]) -> list[tuple[str, float, str]]:
    return [(_text(flat[i]), int(flat[i + 1]) / 1000, _text(flat[i + 2])) for i in range(0, len(flat), 3)]


def _suspensions(flat: list[Any]) -> Suspensions:
    out: Suspensions = {}
    for key, left, rest in _triples(flat):
        parts = rest.split(" ", 3)
        if len(parts) == 4 and parts[0].isdigit():
            enhanced = "" if parts[1] == "-" else parts[1]
            out[key] = (left, Reply(int(parts[0]), enhanced, parts[3]), parts[2])
    return out


def _limits(flat: list[Any]) -> Limits:
    out: Limits = {}
    for key, left, rest in _triples(flat):
        parts = rest.split(" ")
        with contextlib.suppress(ValueError, IndexError):
            out[key] = (left, int(parts[0]), float(parts[1]))
    return out
