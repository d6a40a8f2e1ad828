# SPDX-License-Identifier: MIT
"""Loop checks on the way out: next hops that are this server, and messages past max_hops."""

from __future__ import annotations

import pytest

from fastmta.config import ListenerConfig
from fastmta.delivery import replies
from fastmta.delivery.loops import OwnAddresses, too_many_hops
from fastmta.delivery.mx import Host, MxError
from fastmta.errors import Bounced


def own(*addresses: tuple[str, int]) -> OwnAddresses:
    return OwnAddresses(ListenerConfig(address=a) for a in addresses)


@pytest.mark.parametrize(
    ("listeners", "address", "port", "is_self"),
    [
        ([("127.0.0.1", 2525)], "127.0.0.1", 2525, True),
        ([("127.0.0.1", 2525)], "::ffff:127.0.0.1", 2525, True),
        ([("127.0.0.1", 2525)], "127.0.0.1", 25, False),  # another MTA on this machine
        ([("127.0.0.1", 2525)], "127.0.0.2", 2525, False),  # nothing of ours listens there
        ([("0.0.0.0", 2525)], "127.0.0.2", 2525, True),  # a wildcard takes every local address
        ([("0.0.0.0", 2525)], "::1", 2525, False),  # but only its own family
        ([("0.0.0.0", 2525)], "192.0.2.1", 2525, False),  # TEST-NET-1: not an address of ours
        ([("::", 2525)], "::1", 2525, True),
        ([("", 2525)], "127.0.0.3", 2525, True),
        ([("::1", 2525)], "::1", 2525, True),
        ([("localhost", 2525)], "127.0.0.1", 2525, True),
        ([("127.0.0.1", 2525)], "mx.a.test", 2525, False),  # not an address at all
    ],
)
def test_is_self(listeners: list[tuple[str, int]], address: str, port: int, is_self: bool) -> None:
    assert own(*listeners).is_self(address, port) is is_self


def test_usable_drops_ourselves_and_every_exchanger_no_better_than_us() -> None:
    me = own(("127.0.0.1", 25))
    better, peer = Host("better", "127.0.0.9", 25, 5), Host("peer", "127.0.0.8", 25, 10)
    us, backup = Host("us", "127.0.0.1", 25, 10), Host("backup", "127.0.0.7", 25, 20)
    assert me.usable([better, peer, us, backup], "a.test") == [better]
    assert me.usable([peer, backup], "a.test") == [peer, backup]  # we are not among them
    with pytest.raises(MxError) as e:
        me.usable([us, peer, backup], "a.test")  # we are the best: a configuration error
    assert isinstance(e.value.outcome, Bounced) and e.value.outcome.bounce_class == "loop"
    assert str(e.value.outcome.reply) == "554 5.4.6 mail for a.test loops back to myself"


def test_too_many_hops_allows_our_own_received_line() -> None:
    """A message arrives with at most max_hops fields; stored, it carries ours on top."""
    stored = b"Received: ours\r\n" + b"Received: theirs\r\n" * 3 + b"Delivered-To: u@a.test\r\n\r\nbody\r\n"
    assert too_many_hops(stored, 4) is None
    bounce = too_many_hops(stored, 3)
    assert bounce == Bounced(replies.TOO_MANY_HOPS, "loop") and bounce.reply.enhanced == "5.4.6"
