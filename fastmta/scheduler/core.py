# SPDX-License-Identifier: MIT
"""The scheduler: split due messages by destination, run deliveries, apply results.

Owns when and how many: shards of per-destination queues (shard.py), retry
times and queue lifetime (retry.py), throttling on 421 / refused connections,
``[[delivery.shaping]]`` rules, DSNs (delivery/dsn.py), the spool state updates,
the delivery log and the delivery metrics. It never reads a body except to quote
it in a DSN, and keeps at most ``max_in_memory`` messages in Python objects: the
rest waits in the spool for the feeder (feeder.py).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

from fastmta import metrics
from fastmta.config import Config
from fastmta.delivery import LOCAL_KEY, Attempt, Deliverer, Destination, destination_for
from fastmta.delivery import dsn as dsnlib
from fastmta.delivery.sources import Sources, base_key
from fastmta.deliverylog import DeliveryLog, iso_ts
from fastmta.errors import Bounced, Deferred, Delivered, Reply, SmtpError
from fastmta.scheduler import outcomes, retry
from fastmta.scheduler.destination import DestQueue
from fastmta.scheduler.ports import QueueSpool, SharedLimits
from fastmta.scheduler.rounds import Round, Work
from fastmta.scheduler.shard import Shard, shard_of
from fastmta.spool.ids import new_id
from fastmta.spool.records import BOUNCE, FAILED, PENDING, Envelope, RcptState, Recipient
from fastmta.spool.suppression import Entry, SuppressionList

log = logging.getLogger("fastmta.scheduler")

MAX_IN_MEMORY = 20_000  # messages held as Python objects; the feeder pages in the rest
DEST_SHARE = 4  # one destination holds at most a quarter of that
PARKED_MAX = 200_000  # ids remembered as turned away (their destination was full); ~100 bytes each
_NO_OUTCOME = Deferred(Reply(451, "4.3.0", "Local error: no delivery outcome"), "other")
_CRASH = Deferred(Reply(451, "4.3.0", "Local error in delivery"), "other")
_SUPPRESSED = Reply(550, "5.7.1", "Recipient address is on the suppression list")
FBL_KEY = "fbl"  # feedback-loop reports: consumed by the feedback deliverer, never sent on


def _tags(env: Envelope, dest: Destination) -> dict[str, str]:
    """Who a delivery was for and where it left from: every delivery log line carries these."""
    return {"tenant": env.tenant, "pool": dest.pool, "source": dest.source.address if dest.source else ""}


def _untried(
    env: Envelope, addr: str, now: float, event: str, reply: Reply, bounce_class: str
) -> dict[str, Any]:
    """The delivery log line of a recipient that fails without an attempt (admin bounce,
    suppression list): no next hop, but the tenant it was sent for."""
    return {"ts": iso_ts(now), "event": event, "id": env.id, "from": env.sender, "rcpt": addr,
            "code": reply.code, "enhanced": reply.enhanced, "response": reply.text,
            "attempt": env.attempts, "bounce_class": bounce_class, "tenant": env.tenant}  # fmt: skip


def _log_failed_write(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("could not add to the suppression list: %s", fut.exception())


class Scheduler:
    """Delivers what it is given (``submit``) or finds due (feeder) through deliverers."""

    def __init__(
        self,
        cfg: Config,
        spool: QueueSpool,
        remote: Deliverer,
        local: Deliverer | None = None,
        dlog: DeliveryLog | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        max_in_memory: int = MAX_IN_MEMORY,
        suppression: SuppressionList | None = None,
        feedback: Deliverer | None = None,
        shared: SharedLimits | None = None,
    ) -> None:
        self.cfg = cfg
        self.shared = shared
        # what the other nodes said, as of the last heartbeat: dest key → (until, reply, class)
        # and dest key → (until, connections, rate); new destination queues adopt it
        self.shared_state: dict[str, tuple[float, Reply, str]] = {}
        self.shared_limits: dict[str, tuple[float, int, float]] = {}
        self.spool = spool
        self.remote = remote
        self.local = local
        self.dlog = dlog if dlog is not None else DeliveryLog(cfg.log.file, node=cfg.cluster.node_id)
        self.clock = clock
        self.rng = rng if rng is not None else random.Random()
        self.max_in_memory = max_in_memory
        self.dest_cap = max(1, max_in_memory // DEST_SHARE)  # ready + in flight per destination
        self.parked: dict[str, DestQueue] = {}  # message id -> the destination that was full
        self.held = cfg.delivery.hold
        self.rounds: dict[str, Round] = {}
        self.overflow = False  # memory was full and due messages were left in the spool
        self.on_room: Callable[[], None] | None = None  # called when memory frees up after overflow
        self.shards = [Shard(i, self) for i in range(cfg.delivery.shards)]
        self._local_domains = frozenset(cfg.policy.local_domains)
        self._dests: dict[str, tuple[Shard, Destination]] = {}
        self._finished: list[Round] = []
        self._log_buf: list[dict[str, Any]] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._m_result = {
            r: metrics.bound(metrics.deliveries_total, r) for r in ("delivered", "deferred", "bounced")
        }
        self._m_seconds = metrics.bound(metrics.delivery_seconds)
        self._m_fail: dict[tuple[str, str], Any] = {}
        self._admin_suspended: set[str] = set()  # destination keys the administrator suspended
        # sending pools, the suppression list and feedback-loop reports (docs/operations.md)
        self.sources = Sources(cfg)
        self.suppression = suppression
        self.feedback = feedback
        self._fbl = frozenset(cfg.suppression.fbl_addresses) if feedback is not None else frozenset()
        self._m_pool: dict[tuple[str, str], Any] = {}
        self._m_suppressed = metrics.bound(metrics.suppressed_total)

    # --- intake ----------------------------------------------------------------------

    def submit(self, envelopes: Iterable[Envelope]) -> None:
        """Start delivering freshly committed messages (no spool scan on this path)."""
        if self.held:
            return
        rounds = self.rounds
        for env in envelopes:
            if env.id in rounds:
                continue
            if len(rounds) >= self.max_in_memory:
                self.overflow = True
                return
            self.admit(env)  # refused: its destination is full and will ask for more (room_for)

    def admit(self, env: Envelope) -> bool:
        """Open a delivery round: one work item per destination of the pending recipients.

        Returns False, doing nothing, when every destination of the message already
        holds its share of memory (``dest_cap``): the message stays due in the spool
        and the feeder comes back for it, so one huge backlog cannot crowd out the
        other destinations.
        """
        groups: dict[str, tuple[Shard, Destination, list[int]]] = {}
        admin: list[int] = []
        blocked = self._suppressed_rcpts(env)
        blocked_set = set(blocked)
        pool = self.sources.pool_of(env.pool, env.sender)
        source = self.sources.pick(pool)
        for i, rc in enumerate(env.rcpts):
            if rc.state == PENDING:
                if blocked and i in blocked_set:
                    continue
                shard, dest = self._destination(rc.addr)
                if self._fbl and rc.addr.lower() in self._fbl:
                    shard, dest = self.shards[0], Destination(FBL_KEY, dest.domain)
                elif dest.key != LOCAL_KEY:
                    dest = self.sources.bind(dest, pool, source)
                    if source is not None:
                        shard = self.shards[shard_of(dest.key, len(self.shards))]
                g = groups.get(dest.key)
                if g is None:
                    groups[dest.key] = (shard, dest, [i])
                else:
                    g[2].append(i)
            elif rc.state == BOUNCE:
                admin.append(i)
        work = [(shard, shard.queue(dest), idx) for shard, dest, idx in groups.values()]
        if (
            work
            and not admin
            and not blocked
            and all(len(dq.ready) + dq.inflight >= self.dest_cap for _, dq, _ in work)
        ):
            for _, dq, _ in work:
                dq.parked = True
            if len(self.parked) >= PARKED_MAX:
                self.parked.clear()
            self.parked[env.id] = work[0][1]
            return False
        rnd = Round(env)
        self.rounds[env.id] = rnd
        rnd.waiting = len(work) + (1 if admin else 0) + (1 if blocked else 0)
        if admin:
            self._admin_bounce(rnd, admin)
        if blocked:
            self._suppress(rnd, blocked)
        if rnd.waiting == 0:
            self._round_done(rnd)
            return True
        for shard, dq, idx in work:
            shard.add(dq, Work(rnd, idx))
        return True

    def still_parked(self, msg_id: str) -> bool:
        """Whether a message turned away earlier would be turned away again (no envelope read)."""
        dq = self.parked.get(msg_id)
        if dq is None:
            return False
        if len(dq.ready) + dq.inflight >= self.dest_cap:
            return True
        del self.parked[msg_id]
        return False

    def _destination(self, addr: str) -> tuple[Shard, Destination]:
        domain = addr.rpartition("@")[2].lower()
        hit = self._dests.get(domain)
        if hit is None:
            if domain in self._local_domains:
                dest = Destination(LOCAL_KEY, domain, None)
            else:
                dest = destination_for(self.cfg.route_for(domain), domain)
            if len(self._dests) > 100_000:
                self._dests.clear()
            hit = self._dests[domain] = (self.shards[shard_of(dest.key, len(self.shards))], dest)
        return hit

    # --- running deliveries ------------------------------------------------------------

    async def deliver(self, dest: Destination, work: Work) -> Attempt:
        """One deliver() call; a deliverer that breaks its promise and raises defers."""
        deliverer = self.local if dest.key == LOCAL_KEY and self.local is not None else self.remote
        if dest.key == FBL_KEY and self.feedback is not None:
            deliverer = self.feedback
        try:
            return await deliverer.deliver(dest, work.round.env, work.rcpts)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("deliverer failed for %s", dest.key)
            return Attempt({i: _CRASH for i in work.rcpts})

    def complete(self, shard: Shard, dq: DestQueue, work: Work, attempt: Attempt) -> None:
        """Apply one attempt's results; throttle or shape the destination on what it said."""
        now = self.clock()
        self._m_seconds.observe(attempt.elapsed)
        results = attempt.outcomes
        failed = [
            o for o in (results.get(i, _NO_OUTCOME) for i in work.rcpts) if not isinstance(o, Delivered)
        ]
        if failed:
            self._react(dq, failed, now)
        self._count_pool(dq.dest.pool, work, results, bool(failed))
        self._apply(dq, work, attempt, now, dq.suspended_until if dq.suspended(now) else 0.0)
        if dq.suspended(now) and dq.ready:
            shard.drain(dq, lambda w: self.skip(dq, w, now))

    def skip(self, dq: DestQueue, work: Work, now: float) -> None:
        """Work for a suspended destination: deferred to the end of the suspension, not tried."""
        outcome = Deferred(dq.suspend_reply or _NO_OUTCOME.reply, dq.suspend_class)
        self._apply(dq, work, Attempt({i: outcome for i in work.rcpts}), now, dq.suspended_until, tried=False)

    def _react(self, dq: DestQueue, failed: list[Deferred | Bounced], now: float) -> None:
        """Throttle on 421 / refusal everywhere; apply the first matching shaping rule."""
        first = failed[0]
        if isinstance(first, Deferred) and all(o.reply.code == 421 for o in failed):
            delay = retry.throttle_delay(self.cfg.delivery.retry_schedule, self.rng)
            dq.suspend(now + delay, first.reply, first.bounce_class)
        for rule in self.cfg.delivery.shaping:
            for o in failed:
                if rule.match.search(str(o.reply)):
                    shared = self.shared
                    if rule.action == "suspend":
                        dq.suspend(now + rule.duration, o.reply, o.bounce_class)
                        if shared is not None:
                            shared.suspend(dq.dest.key, rule.duration, o.reply, o.bounce_class)
                    else:
                        dq.limit(now + rule.duration, rule.max_connections, rule.message_rate)
                        if shared is not None:
                            shared.limit(dq.dest.key, rule.duration, rule.max_connections, rule.message_rate)
                    return

    def _apply(
        self, dq: DestQueue, work: Work, attempt: Attempt, now: float, floor: float, tried: bool = True
    ) -> None:
        rnd = work.round
        env = rnd.env
        d = self.cfg.delivery
        attempted = outcomes.Attempted(
            sender=env.sender,
            attempts=env.attempts,
            arrived=env.arrived,
            now=now,
            floor=floor,
            schedule=d.retry_schedule,
            lifetime=d.max_queue_lifetime,
            local=dq.dest.key == LOCAL_KEY,
            remote=dsnlib.remote_host(attempt.nexthop) if attempt.nexthop else "",
            dsn_passed=attempt.dsn_passed,
            tried=tried,
        )
        base: dict[str, Any] = {
            "ts": iso_ts(now),
            "id": env.id,
            "from": env.sender,
            "nexthop": attempt.nexthop,
            "attempt": env.attempts + 1,
            "elapsed_ms": int(attempt.elapsed * 1000),
            "tls": attempt.tls,
            **_tags(env, dq.dest),
        }
        if attempt.dkim:
            base["dkim"] = list(attempt.dkim)
        if attempt.tls_policy:
            base["tls_policy"] = attempt.tls_policy
        results = attempt.outcomes
        records = self._log_buf
        for i in work.rcpts:
            o = results.get(i, _NO_OUTCOME)
            rc = env.rcpts[i]
            decision = outcomes.decide(o, rc, attempted, self.rng)
            rnd.states[i] = decision.state
            if decision.retry_at is not None:
                rnd.retry(decision.retry_at)
            if decision.report is not None:
                rnd.report(decision.report)
            reply = decision.reply
            rec = {
                **base,
                "rcpt": rc.addr,
                "code": reply.code,
                "enhanced": reply.enhanced,
                "response": reply.text,
                "event": decision.event,
            }
            if isinstance(o, Delivered):
                self._m_result["delivered"].inc()
            else:
                rec["bounce_class"] = o.bounce_class
                self._count(outcomes.RESULT[decision.event], o.bounce_class)
            records.append(rec)
        self._schedule_flush()
        rnd.waiting -= 1
        if rnd.waiting == 0:
            self._round_done(rnd)

    def _admin_bounce(self, rnd: Round, idx: list[int]) -> None:
        """``fastmta queue bounce``: those recipients fail now with a DSN, untried."""
        env = rnd.env
        now = self.clock()
        for i in idx:
            rc = env.rcpts[i]
            decision = outcomes.admin_bounce(rc, env.sender)
            rnd.states[i] = decision.state
            self._log_buf.append(_untried(env, rc.addr, now, decision.event, decision.reply, "other"))
            self._count("bounced", "other")
            if decision.report is not None:
                rnd.report(decision.report)
        self._schedule_flush()
        rnd.waiting -= 1

    def _suppressed_rcpts(self, env: Envelope) -> list[int]:
        """Pending recipients on the suppression list (one read transaction per message)."""
        if self.suppression is None:
            return []
        todo = [(i, rc.addr) for i, rc in enumerate(env.rcpts) if rc.state == PENDING]
        return self.suppression.suppressed(todo, env.tenant) if todo else []

    def _suppress(self, rnd: Round, idx: list[int]) -> None:
        """Suppressed recipients fail untried: ``550 5.7.1``, event ``suppressed``, a DSN."""
        env = rnd.env
        now = self.clock()
        reply = _SUPPRESSED
        for i in idx:
            rc = env.rcpts[i]
            rnd.states[i] = RcptState(FAILED, str(reply))
            self._log_buf.append(_untried(env, rc.addr, now, "suppressed", reply, "suppressed"))
            self._count("bounced", "suppressed")
            self._m_suppressed.inc()
            if dsnlib.wanted(env.sender, rc.notify, "failed"):
                rnd.report(dsnlib.RcptReport(rc.addr, "failed", dsnlib.status_of(reply), reply, rc.orcpt))
        self._schedule_flush()
        rnd.waiting -= 1

    def _count_pool(self, pool: str, work: Work, results: dict[int, Any], failed: bool) -> None:
        """``fastmta_pool_deliveries_total`` and, on ``invalid_recipient`` bounces, auto-suppression."""
        auto: list[Entry] = []
        for i in work.rcpts:
            o = results.get(i, _NO_OUTCOME)
            result = (
                "delivered"
                if isinstance(o, Delivered)
                else "bounced"
                if isinstance(o, Bounced)
                else "deferred"
            )
            child = self._m_pool.get((pool, result))
            if child is None:
                child = self._m_pool[(pool, result)] = metrics.bound(
                    metrics.pool_deliveries_total, pool, result
                )
            child.inc()
            if failed and isinstance(o, Bounced) and o.bounce_class == "invalid_recipient":
                auto.append(Entry(work.round.env.rcpts[i].addr, work.round.env.tenant, str(o.reply)))
        if auto and self.suppression is not None and self.cfg.suppression.auto:
            fut = self.suppression.add_soon(auto)
            fut.add_done_callback(_log_failed_write)

    def _count(self, result: str, bounce_class: str) -> None:
        self._m_result[result].inc()
        key = (result, bounce_class)
        child = self._m_fail.get(key)
        if child is None:
            child = self._m_fail[key] = metrics.bound(metrics.delivery_failures_total, result, bounce_class)
        child.inc()

    # --- end of a round: DSN, spool update, log ---------------------------------------

    def _round_done(self, rnd: Round) -> None:
        self._finished.append(rnd)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Once per loop turn: one log write, one task persisting every finished round."""
        self._flush_scheduled = False
        if self._log_buf:
            buf, self._log_buf = self._log_buf, []
            self.dlog.write(buf)
        if self._finished:
            batch, self._finished = self._finished, []
            self._spawn(self._persist(batch))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _persist(self, batch: list[Round]) -> None:
        spool = self.spool
        try:
            dsns = [r for r in batch if r.reports]
            sent = await asyncio.gather(*map(self._send_dsns, dsns), return_exceptions=True)
            for r, res in zip(dsns, sent, strict=True):
                if isinstance(res, BaseException):
                    log.error("DSN for %s failed: %s", r.env.id, res)
            # plain futures, one group commit (no Task per message: this runs once per loop turn)
            futures = spool.update_many((r.env.id, r.states, r.retry_at) for r in batch)
            results = await asyncio.gather(*futures, return_exceptions=True)
            for r, res in zip(batch, results, strict=True):
                if isinstance(res, BaseException):
                    log.error("spool update of %s failed: %s", r.env.id, res)
        finally:
            rounds = self.rounds
            for r in batch:
                rounds.pop(r.env.id, None)
            if self.overflow and len(rounds) < self.max_in_memory // 2 and self.on_room is not None:
                self.overflow = False  # the feeder's pass sets it again if memory fills up again
                self.on_room()

    async def _send_dsns(self, rnd: Round) -> None:
        """One DSN per kind (failed, delayed, delivered) covering all its recipients."""
        env = rnd.env
        by_action: dict[str, list[dsnlib.RcptReport]] = {}
        for rep in rnd.reports or ():
            by_action.setdefault("delivered" if rep.action == "relayed" else rep.action, []).append(rep)
        original = self.spool.body(env.id)
        for action, reports in by_action.items():
            try:
                await self.queue_dsn(env, reports, original)
            except SmtpError as e:  # spool full or down: worth trying again later
                log.error("could not queue a %s DSN for %s: %s", action, env.id, e)
                if action == "failed":
                    self._unfail(rnd, reports)
            except Exception:  # a DSN that cannot be built would fail again: lose it, not the queue
                log.exception("could not build a %s DSN for %s", action, env.id)

    def _unfail(self, rnd: Round, reports: list[dsnlib.RcptReport]) -> None:
        """The bounce could not be queued: keep those recipients queued rather than lose the news.

        They are tried again after the first retry interval and fail (with a DSN) then.
        """
        env = rnd.env
        failed = {r.rcpt for r in reports}
        for i, st in list(rnd.states.items()):
            rc = env.rcpts[i]
            if st.state == FAILED and rc.addr in failed:
                rnd.states[i] = RcptState(BOUNCE if rc.state == BOUNCE else PENDING, st.last_error)
        rnd.retry(self.clock() + retry.delay(1, self.cfg.delivery.retry_schedule, self.rng))

    async def queue_dsn(self, env: Envelope, reports: list[dsnlib.RcptReport], original: bytes | None) -> str:
        """Build one DSN about ``env`` and queue it (sender ``<>``, to the original sender); its id.

        The DSN belongs to the message's tenant, so its log lines and webhooks name it.
        """
        now = self.clock()
        body = dsnlib.build(
            reports,
            msg_id=env.id,
            sender=env.sender,
            arrived=env.arrived,
            hostname=self.cfg.hostname,
            bounce_from=self.cfg.delivery.bounce_from,
            original=original,
            ret=env.params.get("RET", ""),
            envid=env.params.get("ENVID", ""),
            now=now,
        )
        params = {"SMTPUTF8": ""} if dsnlib.needs_utf8(env.sender, reports) else {}
        if not body.isascii():
            params["BODY"] = "8BITMIME"
        dsn_env = Envelope(
            new_id(),
            "",
            [Recipient(env.sender)],
            arrived=now,
            size=len(body),
            next_attempt=now,
            listener="dsn",
            params=params,
            tenant=env.tenant,
        )
        await self.spool.put(dsn_env, body)
        return dsn_env.id

    # --- control -----------------------------------------------------------------------

    def reload(self, cfg: Config) -> None:
        """SIGHUP: new limits and rules apply to new work; lifting ``hold`` starts delivering."""
        self.cfg = cfg
        self.held = cfg.delivery.hold
        self._local_domains = frozenset(cfg.policy.local_domains)
        self._dests.clear()
        self.sources = Sources(cfg)
        if self.feedback is not None:
            self._fbl = frozenset(cfg.suppression.fbl_addresses)
        d = cfg.delivery
        for shard in self.shards:
            for dq in shard.dests.values():
                dq.max_conn = d.max_connections_per_destination
                dq.rate = d.message_rate_per_destination
                shard.kick(dq, self.clock())

    def lift(self, domains: frozenset[str] | None) -> None:
        """``queue flush`` means retry now: end the suspension of these domains' destinations
        (None: of every destination), so flushed messages are tried, not put back."""
        now = self.clock()
        if domains is None:
            queues = [(s, dq) for s in self.shards for dq in s.dests.values()]
        else:
            keys = {self._destination("@" + domain)[1].key for domain in domains}
            queues = [(s, dq) for s in self.shards for dq in s.dests.values() if base_key(dq.dest) in keys]
        for shard, dq in queues:
            if dq.suspended(now):
                log.info("queue flush: delivery to %s resumed", dq.dest.key)
                dq.suspended_until = 0.0
                shard.kick(dq, now)

    def suspend_admin(self, entries: dict[str, tuple[float, str]]) -> None:
        """Administrative suspensions (spool/suspend.py): domain → (until, reason), all of them.

        Each named destination is suspended until its end: ready work is put back
        untried at once, new work is deferred to the end. Destinations no longer
        named are resumed (as a ``queue flush`` resumes them)."""
        now = self.clock()
        keys: set[str] = set()
        for domain, (until, reason) in entries.items():
            shard, dest = self._destination("@" + domain)
            keys.add(dest.key)
            dq = shard.queue(dest)
            reply = Reply(451, "4.7.1", f"by the administrator: {reason or 'no reason given'}")
            dq.suspend(until, reply, "other")
            if self.shared is not None and until > now:  # every node of a cluster
                self.shared.suspend(dest.key, until - now, reply, "other")
            if dq.suspended(now) and dq.ready:
                self._skip_all(shard, dq, now)
        for key in self._admin_suspended - keys:
            for shard in self.shards:
                old = shard.dests.get(key)
                if old is not None and old.suspended(now):
                    log.info("delivery to %s resumed by the administrator", key)
                    old.suspended_until = 0.0
                    shard.kick(old, now)
            if self.shared is not None:
                self.shared.resume(key)
        self._admin_suspended = keys

    def _skip_all(self, shard: Shard, dq: DestQueue, now: float) -> None:
        shard.drain(dq, lambda w: self.skip(dq, w, now))

    def suspend(self, domain: str, seconds: float, reason: str) -> None:
        """Suspend delivery to ``domain``'s destination for ``seconds``, on every node of a
        cluster: queued mail waits (deferred, untried) until the suspension ends or ``resume``."""
        shard, dest = self._destination("@" + domain.lower().rstrip("."))
        reply = Reply(451, "4.7.1", reason or "suspended by the operator")
        self._suspend_here(shard, shard.queue(dest), self.clock() + seconds, reply, "policy")
        if self.shared is not None:
            self.shared.suspend(dest.key, seconds, reply, "policy")

    def resume(self, domain: str) -> None:
        """End a suspension of ``domain``'s destination now, on every node of a cluster."""
        _, dest = self._destination("@" + domain.lower().rstrip("."))
        self.shared_state.pop(dest.key, None)
        self._lift_keys([dest.key])
        if self.shared is not None:
            self.shared.resume(dest.key)

    def _suspend_here(self, shard: Shard, dq: DestQueue, until: float, reply: Reply, cls: str) -> None:
        dq.suspend(until, reply, cls)
        now = self.clock()
        if dq.suspended(now) and dq.ready:
            shard.drain(dq, lambda w: self.skip(dq, w, now))

    def apply_shared(
        self, suspended: dict[str, tuple[float, Reply, str]], limited: dict[str, tuple[float, int, float]]
    ) -> None:
        """The cluster heartbeat's news (seconds left per destination): suspend and limit the
        destinations other nodes suspended or limited; lift those resumed before their end."""
        now = self.clock()
        ended = [k for k, (until, _, _) in self.shared_state.items() if k not in suspended and until > now]
        self.shared_state = {k: (now + left, reply, cls) for k, (left, reply, cls) in suspended.items()}
        self.shared_limits = {k: (now + left, c, r) for k, (left, c, r) in limited.items()}
        for key, (until, reply, cls) in self.shared_state.items():
            shard = self.shards[shard_of(key, len(self.shards))]
            dq = shard.dests.get(key)
            if dq is not None and until > dq.suspended_until:
                self._suspend_here(shard, dq, until, reply, cls)
        for key, (until, conn, rate) in self.shared_limits.items():
            dq = self.shards[shard_of(key, len(self.shards))].dests.get(key)
            if dq is not None and until > dq.limit_until:
                dq.limit(until, conn, rate)
        if ended:
            self._lift_keys(ended)

    def adopt(self, dq: DestQueue) -> None:
        """A new destination queue takes on the cluster's suspension and limit of its key."""
        key = dq.dest.key
        s = self.shared_state.get(key)
        if s is not None:
            dq.suspend(*s)
        lim = self.shared_limits.get(key)
        if lim is not None:
            dq.limit(*lim)

    def _lift_keys(self, keys: Iterable[str]) -> None:
        now = self.clock()
        for key in keys:
            shard = self.shards[shard_of(key, len(self.shards))]
            dq = shard.dests.get(key)
            if dq is not None and dq.suspended(now):
                log.info("delivery to %s resumed", key)
                dq.suspended_until = 0.0
                shard.kick(dq, now)

    def room_for(self, dq: DestQueue) -> None:
        """A parked destination (it had hit ``dest_cap``) has drained to half: feed it again."""
        dq.parked = False
        if self.on_room is not None:
            self.on_room()

    def depth(self) -> tuple[int, int]:
        """(ready, inflight) work items across shards, for the queue gauges."""
        return sum(s.ready for s in self.shards), sum(s.inflight for s in self.shards)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop starting deliveries; give running ones ``grace`` seconds, then cancel them."""
        self.held = True
        for s in self.shards:  # workers keeping a cluster lease for more work end now
            for dq in s.dests.values():
                dq.wake(every=True)
        workers = [t for s in self.shards for t in s.tasks]
        if workers:
            await asyncio.wait(workers, timeout=grace)
        for s in self.shards:
            for t in list(s.tasks):
                t.cancel()
        self._flush()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)
