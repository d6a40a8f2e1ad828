# SPDX-License-Identifier: MIT
"""The scheduler ⇄ deliverer seam: what to deliver where, and what happened.

The scheduler decides *when* and *how many at once*; a deliverer decides *how*
(MX, pool, TLS, SMTP or local). A deliverer reads the body itself
(``spool.body(envelope.id)``), never raises, and reports one outcome per
recipient index so the scheduler can update each recipient's state separately.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from fastmta.config import Config, RouteConfig, SourceConfig
from fastmta.errors import Outcome

if TYPE_CHECKING:
    from fastmta.spool.records import Envelope

LOCAL_KEY = "local"


class BodySource(Protocol):
    """The one thing a deliverer asks of the spool: a message's bytes (None: gone)."""

    def body(self, msg_id: str) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class Destination:
    """Where one batch goes.

    ``key`` is the scheduling key: the recipient domain, ``"[host]:port"`` of a
    ``[[route]]`` next hop, or ``"local"``. ``domain`` is a recipient domain of the
    batch (for routes: the first one). ``source`` is the egress source of a sending
    pool (delivery/sources.py): its address is bound and its EHLO name said; the key
    then names it too, so limits, suspensions and reused connections are per source.
    """

    key: str
    domain: str
    route: RouteConfig | None = None
    source: SourceConfig | None = None
    pool: str = "default"


@dataclass(slots=True)
class Attempt:
    """The result of one ``deliver()`` call.

    ``outcomes`` maps a recipient index in ``envelope.rcpts`` to Delivered,
    Deferred or Bounced; every index passed in gets one.
    """

    outcomes: dict[int, Outcome] = field(default_factory=dict)
    nexthop: str = ""  # e.g. "mx1.a.test[127.0.0.2]:2525", for the log
    tls: str | None = None  # e.g. "TLSv1.3"; None when plain
    elapsed: float = 0.0  # seconds
    # the next hop offered DSN, so NOTIFY went with each RCPT: its success notice is the
    # next hop's job (RFC 3461 §5.2), not ours ("relayed" only when this is False)
    dsn_passed: bool = False
    dkim: tuple[str, ...] = ()  # d= domains of the DKIM signatures the message went out with
    tls_policy: str = ""  # the outbound TLS policy applied (delivery/tlspolicy.py), "" for local


class Deliverer(Protocol):
    async def deliver(self, dest: Destination, envelope: Envelope, rcpts: list[int]) -> Attempt: ...

    async def hang_up(self, key: str, keep: int = 0) -> int:
        """Close the idle connections kept for destination ``key`` but the ``keep`` most recent,
        and wait for their QUIT (a cluster-wide connection lease must not end before its
        connection does); how many it closed (0: returns without yielding to the loop)."""
        ...

    def reload(self, cfg: Config) -> None:
        """SIGHUP: the next delivery uses ``cfg``; deliveries in flight finish as they began."""

    async def close(self) -> None: ...


def destination_for(cfg_route: RouteConfig | None, domain: str) -> Destination:
    """The Destination of a recipient domain: its route's ``[host]:port``, or the domain."""
    if cfg_route is None:
        return Destination(domain, domain, None)
    host, port = cfg_route.nexthop
    return Destination(f"[{host}]:{port}", domain, cfg_route)
