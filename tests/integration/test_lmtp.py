# SPDX-License-Identifier: MIT
"""LocalDeliverer over LMTP (RFC 2033) against a real aiosmtpd LMTP server, TCP and unix socket:
one reply per accepted recipient after the data, mapped to Delivered / Deferred / Bounced."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from fastmta import config, metrics
from fastmta.delivery import Destination
from fastmta.delivery.local import LocalDeliverer
from fastmta.errors import Bounced, Deferred, Delivered
from fastmta.spool.records import Envelope, Recipient
from tests.fixtures.spool import BodySpool
from tests.support import established, free_port

LOCAL = Destination("local", "local.test")
BODY = b"From: a@x.test\r\nSubject: lmtp\r\n\r\n.leading dot\r\nline\r\n"


def make_cfg(tmp_path: Path, lmtp: str, **delivery: Any) -> config.Config:
    return config.from_dict({
        "hostname": "mx.fastmta.test",
        "policy": {"local_domains": ["local.test"]},
        "local": {"maildir": str(tmp_path / "mail"), "lmtp": lmtp},
        "delivery": {"connect_timeout": "2s", "command_timeout": "30s", **delivery},
        "metrics": {"address": ""},
    })  # fmt: skip


def envelope(*rcpts: str, msg_id: str = "L1", **params: str) -> Envelope:
    return Envelope(msg_id, "a@x.test", [Recipient(r) for r in rcpts], params=dict(params))


async def deliver_all(d: LocalDeliverer, *envs: Envelope) -> list[dict[int, Any]]:
    out = []
    for env in envs:
        attempt = await asyncio.wait_for(d.deliver(LOCAL, env, list(range(len(env.rcpts)))), 60)
        out.append(dict(attempt.outcomes))
    return out


def run(cfg: config.Config, *envs: Envelope, body: bytes = BODY) -> list[dict[int, Any]]:
    async def go() -> list[dict[int, Any]]:
        d = LocalDeliverer(cfg, BodySpool({e.id: body for e in envs}))
        try:
            return await deliver_all(d, *envs)
        finally:
            await d.close()

    return asyncio.run(go())


@pytest.mark.parametrize("unix", [False, True], ids=["tcp", "unix"])
@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "lockstep"])
def test_mixed_per_recipient_results(lmtp_server: Callable[..., Any], tmp_path: Path, unix: bool,
                                     pipelining: bool) -> None:  # fmt: skip
    srv = lmtp_server(
        unix=unix, pipelining=pipelining,
        rcpt={"nobody@local.test": "550 5.1.1 No such user"},
        after_data={"full@local.test": "452 4.2.2 Mailbox full",
                    "gone@local.test": "550 5.2.1 Mailbox disabled"},
    )  # fmt: skip
    env = envelope(
        "ok@local.test", "full@local.test", "nobody@local.test", "gone@local.test", "ok2@local.test"
    )
    [out] = run(make_cfg(tmp_path, srv.spec), env)
    assert isinstance(out[0], Delivered) and out[0].reply.code == 250
    assert isinstance(out[1], Deferred) and (out[1].reply.code, out[1].reply.enhanced) == (452, "4.2.2")
    assert out[1].bounce_class == "mailbox_full"
    assert isinstance(out[2], Bounced) and out[2].reply.enhanced == "5.1.1"
    assert out[2].bounce_class == "invalid_recipient"
    assert isinstance(out[3], Bounced) and out[3].reply.enhanced == "5.2.1"
    assert isinstance(out[4], Delivered)
    [msg] = srv.messages
    assert msg.rcpt_tos == ["ok@local.test", "ok2@local.test"]
    assert msg.data == BODY  # dot-stuffed on the wire, unstuffed by the server


def test_refused_sender_applies_to_every_recipient(lmtp_server: Callable[..., Any], tmp_path: Path) -> None:
    srv = lmtp_server(mail="451 4.3.0 Try later")
    [out] = run(make_cfg(tmp_path, srv.spec), envelope("a@local.test", "b@local.test"))
    assert all(isinstance(o, Deferred) and o.reply.code == 451 for o in out.values())
    assert srv.messages == []


def test_every_recipient_refused_sends_no_data(lmtp_server: Callable[..., Any], tmp_path: Path) -> None:
    srv = lmtp_server(rcpt={"a@local.test": "550 5.1.1 No", "b@local.test": "450 4.2.1 Busy"})
    [out] = run(make_cfg(tmp_path, srv.spec), envelope("a@local.test", "b@local.test"))
    assert isinstance(out[0], Bounced) and isinstance(out[1], Deferred)
    assert srv.messages == []


def test_connection_is_reused_across_messages(lmtp_server: Callable[..., Any], tmp_path: Path) -> None:
    srv = lmtp_server()
    envs = [envelope(f"u{i}@local.test", msg_id=f"R{i}") for i in range(5)]
    outs = run(make_cfg(tmp_path, srv.spec), *envs)
    assert all(isinstance(o[0], Delivered) for o in outs)
    assert srv.connections() == 1 and len(srv.messages) == 5


def test_reuse_cap_opens_a_new_session(lmtp_server: Callable[..., Any], tmp_path: Path) -> None:
    srv = lmtp_server()
    envs = [envelope(f"u{i}@local.test", msg_id=f"C{i}") for i in range(4)]
    run(make_cfg(tmp_path, srv.spec, max_messages_per_connection=2), *envs)
    assert srv.connections() == 2 and len(srv.messages) == 4


def test_idle_session_closed_by_server_is_retried_fresh(
    lmtp_server: Callable[..., Any], tmp_path: Path
) -> None:
    srv = lmtp_server(idle_timeout=0.3)
    cfg = make_cfg(tmp_path, srv.spec)
    port = int(srv.spec.rsplit(":", 1)[1])

    async def go() -> list[Any]:
        d = LocalDeliverer(cfg, BodySpool({"S1": BODY, "S2": BODY}))
        try:
            [first] = await deliver_all(d, envelope("a@local.test", msg_id="S1"))
            # The server says 421 and closes the idle session after 0.3 s: wait until it has.
            deadline = time.monotonic() + 30
            while established(port):
                assert time.monotonic() < deadline, "the LMTP server kept its idle session"
                await asyncio.sleep(0.05)
            [second] = await deliver_all(d, envelope("b@local.test", msg_id="S2"))
            return [first[0], second[0]]
        finally:
            await d.close()

    first, second = asyncio.run(go())
    assert isinstance(first, Delivered) and isinstance(second, Delivered), second
    assert srv.connections() == 2


def test_server_down_defers_with_connection_class(tmp_path: Path) -> None:
    [out] = run(make_cfg(tmp_path, f"127.0.0.1:{free_port()}"), envelope("a@local.test"))
    assert isinstance(out[0], Deferred) and out[0].reply.code == 421 and out[0].bounce_class == "connection"


def test_missing_unix_socket_defers(tmp_path: Path) -> None:
    [out] = run(make_cfg(tmp_path, f"unix:{tmp_path / 'none.sock'}"), envelope("a@local.test"))
    assert isinstance(out[0], Deferred) and out[0].reply.code == 421


@pytest.mark.parametrize(
    ("greeting", "code"),
    [(b"421 4.3.2 Shutting down\r\n", 421), (b"554 5.3.2 Go away\r\n", 554), (b"not smtp at all\r\n", 451)],
)
def test_refusing_or_broken_server(tmp_path: Path, greeting: bytes, code: int) -> None:
    async def go() -> Any:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(greeting)
            await writer.drain()
            await reader.read(100)
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        d = LocalDeliverer(make_cfg(tmp_path, f"127.0.0.1:{port}"), BodySpool({"B1": BODY}))
        try:
            [out] = await deliver_all(d, envelope("a@local.test", msg_id="B1"))
        finally:
            await d.close()
            server.close()
        return out[0]

    out = asyncio.run(go())
    assert out.reply.code == code
    assert isinstance(out, Bounced if code >= 500 else Deferred)


def test_silent_server_times_out(tmp_path: Path) -> None:
    async def go() -> Any:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(100)  # never greets
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cfg = make_cfg(tmp_path, f"127.0.0.1:{port}", command_timeout="0.5s")
        d = LocalDeliverer(cfg, BodySpool({"T1": BODY}))
        try:
            [out] = await deliver_all(d, envelope("a@local.test", msg_id="T1"))
        finally:
            await d.close()
            server.close()
        return out[0]

    out = asyncio.run(go())
    assert isinstance(out, Deferred) and out.bounce_class == "timeout"


def test_body_and_smtputf8_params_pass_when_offered(lmtp_server: Callable[..., Any], tmp_path: Path) -> None:
    srv = lmtp_server()
    body = "Subject: grüße\r\n\r\nüñí\r\n".encode()
    env = envelope("jörg@local.test", BODY="8BITMIME", SMTPUTF8="")
    [out] = run(make_cfg(tmp_path, srv.spec), env, body=body)
    assert isinstance(out[0], Delivered)
    assert srv.messages[0].data == body
    assert any("BODY=8BITMIME" in c and "SMTPUTF8" in c for c in srv.commands if c.startswith("MAIL"))


@pytest.mark.parametrize(
    ("sender", "rcpt", "subject"),
    [("jörg@x.test", "bob@local.test", "plain"), ("a@x.test", "jörg@local.test", "plain"),
     ("a@x.test", "bob@local.test", "grüße")],
    ids=["utf8-sender", "utf8-recipient", "utf8-header"],
)  # fmt: skip
def test_server_without_smtputf8_gets_nothing_and_fails_5_6_7(
    lmtp_server: Callable[..., Any], tmp_path: Path, sender: str, rcpt: str, subject: str
) -> None:
    """Dovecot 2.3 offers no SMTPUTF8: a UTF-8 message fails at once with 5.6.7 (as over SMTP)
    instead of a 501 at RCPT or a mangled Return-Path; nothing is sent, the session stays usable."""
    srv = lmtp_server(smtputf8=False)
    env = Envelope("U1", sender, [Recipient(rcpt), Recipient("ann@local.test")], params={"SMTPUTF8": ""})
    body = f"Subject: {subject}\r\n\r\nbody\r\n".encode()
    ascii_env = envelope("ann@local.test", msg_id="A1", SMTPUTF8="")  # asked, but needs no UTF-8
    cfg = make_cfg(tmp_path, srv.spec)

    async def go() -> list[dict[int, Any]]:
        d = LocalDeliverer(cfg, BodySpool({"U1": body, "A1": BODY}))
        try:
            return await deliver_all(d, env, ascii_env)
        finally:
            await d.close()

    out, ascii_out = asyncio.run(go())
    for o in out.values():
        assert isinstance(o, Bounced) and (o.reply.code, o.reply.enhanced) == (553, "5.6.7")
        assert o.bounce_class == "other"
    assert isinstance(ascii_out[0], Delivered)
    assert [m.rcpt_tos for m in srv.messages] == [["ann@local.test"]]
    assert not any("SMTPUTF8" in c for c in srv.commands) and srv.connections() == 1


def test_users_file_still_applies_before_lmtp(lmtp_server: Callable[..., Any], tmp_path: Path) -> None:
    srv = lmtp_server()
    users = tmp_path / "users"
    users.write_text("known\n")
    cfg = config.from_dict({
        "hostname": "mx.fastmta.test", "policy": {"local_domains": ["local.test"]},
        "local": {"lmtp": srv.spec, "users_file": str(users)}, "metrics": {"address": ""},
    })  # fmt: skip
    [out] = run(cfg, envelope("known@local.test", "stranger@local.test"))
    assert isinstance(out[0], Delivered) and isinstance(out[1], Bounced)
    assert srv.messages[0].rcpt_tos == ["known@local.test"]


def test_connection_lost_after_some_replies_keeps_them(tmp_path: Path) -> None:
    """The first recipient's 250 stands (no duplicate later); the unanswered one is deferred."""

    async def go() -> dict[int, Any]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"220 lmtp.test LMTP\r\n")
            await reader.readline()
            writer.write(b"250-lmtp.test\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n")
            for _ in range(4):  # MAIL, RCPT, RCPT, DATA
                await reader.readline()
            writer.write(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 Go\r\n")
            await reader.readuntil(b"\r\n.\r\n")
            writer.write(b"250 2.0.0 first delivered\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        d = LocalDeliverer(make_cfg(tmp_path, f"127.0.0.1:{port}"), BodySpool({"P1": BODY}))
        try:
            [out] = await deliver_all(d, envelope("a@local.test", "b@local.test", msg_id="P1"))
        finally:
            await d.close()
            server.close()
        return out

    out = asyncio.run(go())
    assert isinstance(out[0], Delivered) and out[0].reply.text == "first delivered"
    assert isinstance(out[1], Deferred) and out[1].bounce_class == "connection"


def test_connection_metrics(lmtp_server: Callable[..., Any], tmp_path: Path) -> None:
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    active, ok = "fastmta_destination_connections_active", "fastmta_delivery_connections_total"
    before_active, before_ok = sample(active), sample(ok, result="ok")
    before_refused = sample(ok, result="refused")
    srv = lmtp_server()
    run(
        make_cfg(tmp_path, srv.spec),
        envelope("a@local.test", msg_id="M1"),
        envelope("b@local.test", msg_id="M2"),
    )
    run(make_cfg(tmp_path, f"127.0.0.1:{free_port()}"), envelope("c@local.test", msg_id="M3"))
    on = 1.0 if metrics.ENABLED else 0.0
    assert sample(active) == before_active  # every connection closed is counted down once
    assert sample(ok, result="ok") == before_ok + on  # one reused session for both messages
    assert sample(ok, result="refused") == before_refused + on


def test_control_characters_never_reach_the_lmtp_command_stream(
    lmtp_server: Callable[..., Any], tmp_path: Path
) -> None:
    srv = lmtp_server()
    env = Envelope("X1", "a@x.test>\r\nRSET\r\nMAIL FROM:<evil@x.test", [Recipient("ok@local.test"),
                   Recipient("b+\r\nDATA@local.test")])  # fmt: skip
    [out] = run(make_cfg(tmp_path, srv.spec), env)
    assert isinstance(out[1], Bounced) and out[1].reply.enhanced == "5.1.3"  # refused before LMTP
    assert out[0].reply.code == 501  # one (odd) MAIL command, refused by the server: no injection
    assert not any(c.startswith(("RSET", "DATA")) or "evil" in c for c in srv.commands)


def test_reload_moves_to_the_new_lmtp_target_then_to_maildir(lmtp_server: Callable[..., Any],
                                                             tmp_path: Path) -> None:  # fmt: skip
    first, second = lmtp_server(), lmtp_server(unix=True)
    envs = [envelope(f"u{n}@local.test", msg_id=f"L{n}") for n in range(3)]

    async def go() -> list[dict[int, Any]]:
        d = LocalDeliverer(make_cfg(tmp_path, first.spec), BodySpool({e.id: BODY for e in envs}))
        try:
            out = await deliver_all(d, envs[0])
            d.reload(make_cfg(tmp_path, second.spec))
            out += await deliver_all(d, envs[1])
            d.reload(make_cfg(tmp_path, ""))
            return out + await deliver_all(d, envs[2])
        finally:
            await d.close()

    assert all(isinstance(o[0], Delivered) for o in asyncio.run(go()))
    assert [m.rcpt_tos for m in first.messages] == [["u0@local.test"]]
    assert [m.rcpt_tos for m in second.messages] == [["u1@local.test"]]
    assert len(list((tmp_path / "mail" / "local.test" / "u2" / "new").iterdir())) == 1


def test_spent_session_is_closed_before_its_delivery_ends(lmtp_server: Callable[..., Any],
                                                          tmp_path: Path) -> None:  # fmt: skip
    """A delivery that retires a spent LMTP session returns only once the session is closed, so
    the scheduler's slot for "local" covers the socket's whole life: an MDA counting connections
    never sees the next one open while the old one still says goodbye."""
    srv = lmtp_server(quit_delay=0.3)
    envs = [envelope(f"u{n}@local.test", msg_id=f"T{n}") for n in range(4)]
    outs = run(make_cfg(tmp_path, srv.spec, max_messages_per_connection=1), *envs)
    assert all(isinstance(o[0], Delivered) for o in outs)
    assert srv.connections() == 4
    assert srv.peak_open == 1, srv.peak_open
