# SPDX-License-Identifier: MIT
"""sendmail's pure parts: flags, reading stdin, header fix-ups, addresses, queue-id parsing."""

from __future__ import annotations

import email
import email.policy
import io
from pathlib import Path

import pytest

from fastmta.commands.sendmail import config_path, parse_args, read_message
from fastmta.commands.sendmail import main as sendmail_main
from fastmta.inject import compose
from fastmta.inject.submit import connect_host, queue_id


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["a@b.test"], {"mode": "m", "extract": False, "dot_ends": True, "rcpts": ["a@b.test"]}),
        (["-t", "-i"], {"extract": True, "dot_ends": False, "rcpts": []}),
        (["-oi", "-oem", "-odb", "-f", "me@x.test", "a@b.test"], {"dot_ends": False, "sender": "me@x.test"}),
        (["-fme@x.test", "-FJo Doe", "--", "-w@b.test"], {"full_name": "Jo Doe", "rcpts": ["-w@b.test"]}),
        (["-r", "old@x.test", "-O", "DeliveryMode=b", "-B", "8BITMIME", "a@b"], {"sender": "old@x.test"}),
        (["-bs"], {"mode": "s"}),
        (["-bp"], {"mode": "p"}),
        (["-q"], {"mode": "m", "rcpts": []}),
        (["a@b", "-t", "c@d"], {"extract": True, "rcpts": ["a@b", "c@d"]}),
        (["--config", "/x.toml", "-C", "/y.toml"], {"config_path": "/y.toml"}),
        (["-N", "failure,delay", "-R", "hdrs", "-V", "env1", "a@b"],
         {"dsn": {"NOTIFY": "FAILURE,DELAY", "RET": "HDRS", "ENVID": "env1"}}),
    ],
)  # fmt: skip
def test_parse_args(argv: list[str], expect: dict[str, object]) -> None:
    opts = parse_args(argv)
    for key, value in expect.items():
        assert getattr(opts, key) == value, key


def test_help_prints_usage_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert sendmail_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: fastmta sendmail") and "75 temporary" in out


def test_parse_args_rejects_unknown_flag() -> None:
    import getopt

    with pytest.raises(getopt.GetoptError):
        parse_args(["-Z"])


def test_config_path_falls_back_to_the_system_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = tmp_path / "fastmta.toml"
    assert config_path(parse_args([]), str(system)) is None
    system.write_text("")
    assert config_path(parse_args([]), str(system)) == str(system)
    monkeypatch.setenv("FASTMTA_CONFIG", "/env.toml")
    assert config_path(parse_args([]), str(system)) == "/env.toml"
    assert config_path(parse_args(["-C", "/flag.toml"]), str(system)) == "/flag.toml"


def test_read_message_stops_at_lone_dot_without_i() -> None:
    data = b"Subject: x\n\nline\n.\nnot read\n"
    assert read_message(io.BytesIO(data), dot_ends=True, limit=1000) == b"Subject: x\n\nline\n"
    assert read_message(io.BytesIO(data), dot_ends=False, limit=1000) == data
    assert read_message(io.BytesIO(b"a\r\n.\r\nb"), dot_ends=True, limit=1000) == b"a\r\n"


@pytest.mark.parametrize("dot_ends", [True, False])
def test_read_message_refuses_past_limit(dot_ends: bool) -> None:
    with pytest.raises(compose.MessageError):
        read_message(io.BytesIO(b"x" * 50 + b"\n"), dot_ends=dot_ends, limit=20)


def test_to_crlf_normalises_every_line_end() -> None:
    assert compose.to_crlf(b"a\nb\r\nc\rd") == b"a\r\nb\r\nc\r\nd"


def test_parse_keeps_folded_fields_and_body_bytes() -> None:
    raw = compose.to_crlf(b"From x@y  Sat Jan 1\nSubject: one\n two\nX-A:b\n\nbody \xff\n\nend\n")
    msg = compose.Message.parse(raw)
    assert msg.fields == [b"Subject: one\r\n two", b"X-A:b"]
    assert msg.body == b"body \xff\r\n\r\nend\r\n"
    assert msg.to_bytes() == b"Subject: one\r\n two\r\nX-A:b\r\n\r\nbody \xff\r\n\r\nend\r\n"


def test_parse_non_header_line_starts_the_body() -> None:
    msg = compose.Message.parse(b"Subject: x\r\nthis is text\r\nmore\r\n")
    assert msg.fields == [b"Subject: x"]
    assert msg.to_bytes() == b"Subject: x\r\n\r\nthis is text\r\nmore\r\n"


def test_parse_refuses_nul_in_header() -> None:
    with pytest.raises(compose.MessageError):
        compose.Message.parse(b"Subject: a\x00b\r\n\r\nbody\r\n")


def test_recipients_from_to_cc_bcc_and_hide_bcc() -> None:
    msg = compose.Message.parse(
        b"To: A <a@x.test>, b@x.test\r\nCc: c@x.test\r\nBcc: d@x.test,\r\n e@x.test\r\n"
        b"Subject: s\r\nTO: f@x.test\r\n\r\nbody\r\n"
    )
    assert msg.recipients() == ["a@x.test", "b@x.test", "c@x.test", "d@x.test", "e@x.test", "f@x.test"]
    msg.hide_bcc()
    assert b"Bcc" not in msg.to_bytes() and b"e@x.test" not in msg.to_bytes()


def test_resent_fields_take_precedence() -> None:
    msg = compose.Message.parse(b"To: old@x.test\r\nResent-To: new@x.test\r\nResent-Bcc: hid@x.test\r\n\r\n")
    assert msg.recipients() == ["new@x.test", "hid@x.test"]
    msg.hide_bcc()
    assert msg.fields == [b"To: old@x.test", b"Resent-To: new@x.test"]


def test_group_syntax_gives_no_recipients() -> None:
    assert compose.Message.parse(b"To: undisclosed-recipients:;\r\n\r\n").recipients() == []


def test_add_missing_adds_only_what_is_absent() -> None:
    msg = compose.Message.parse(b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nSubject: s\r\n\r\nb\r\n")
    compose.add_missing(msg, hostname="h.test", sender="me@h.test", full_name="Jo", msg_id="ID", uid=7)
    out = msg.to_bytes()
    assert out.startswith(b"Received: by h.test (fastmta sendmail, from userid 7)\r\n\tid ID; ")
    assert out.count(b"Date:") == 1
    assert b"From: Jo <me@h.test>\r\n" in out and b"Message-ID: <ID@h.test>\r\n" in out
    msg2 = compose.Message.parse(b"from: x@y.test\r\nmessage-id: <a@b>\r\n\r\n")
    compose.add_missing(msg2, hostname="h.test", sender="me@h.test", full_name="", msg_id="ID", uid=0)
    assert msg2.to_bytes().count(b"rom:") == 1 and msg2.to_bytes().lower().count(b"message-id") == 1


def test_add_missing_encodes_non_ascii_full_name() -> None:
    msg = compose.Message.parse(b"\r\n")
    compose.add_missing(msg, hostname="h.test", sender="me@h.test", full_name="Jörg", msg_id="I", uid=0)
    parsed = email.message_from_bytes(msg.to_bytes(), policy=email.policy.default)
    assert msg.to_bytes().isascii() and parsed["From"] == "Jörg <me@h.test>"


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("bad address", ["bad address"]),  # kept whole, so the syntax check refuses it
        ('"Doe, John" <j@x.test>, k@x.test', ["j@x.test", "k@x.test"]),
        ("a@x.test (Ann, the boss), c@y.test", ["a@x.test", "c@y.test"]),
        ("Team: a@x.test, Bee <b@y.test>;", ["a@x.test", "b@y.test"]),
        ("undisclosed-recipients:;", []),
        ('"a,b"@x.test', ['"a,b"@x.test']),
    ],
)
def test_split_addresses_drops_nothing_silently(text: str, expect: list[str]) -> None:
    assert compose.split_addresses(text) == expect


@pytest.mark.parametrize(
    ("items", "expect"),
    [
        (["a@x.test"], ["a@x.test"]),
        (["a@x.test, B <b@x.test>"], ["a@x.test", "b@x.test"]),
        (["root"], ["root@h.test"]),
        (["<c@x.test>"], ["c@x.test"]),
        (["jörg@x.test"], ["jörg@x.test"]),
    ],
)
def test_parse_recipients(items: list[str], expect: list[str]) -> None:
    assert compose.parse_recipients(items, "h.test") == expect


@pytest.mark.parametrize(
    "bad", ["a b@x.test", "bad address", "a@", "@x.test", "a@x..test", "a@[bad", "", "<>"]
)
def test_parse_recipients_refuses_bad_syntax(bad: str) -> None:
    with pytest.raises(compose.AddressError):
        compose.parse_recipients([bad], "h.test")


@pytest.mark.parametrize(
    ("reply", "qid"),
    [
        ("2.0.0 Ok: queued as 8DxmvPkCVW57bRvx", "8DxmvPkCVW57bRvx"),
        ("Ok: queued as ABC123DEF.", "ABC123DEF"),
        ("2.0.0 OK id=1rAbCd-000123-XY", "1rAbCd-000123-XY"),
        ("2.6.0 <x@y> Queued mail for delivery", "2.6.0 <x@y> Queued mail for delivery"),
        ("OK 4f2a9c1e7b", "4f2a9c1e7b"),
    ],
)  # fmt: skip
def test_queue_id_from_reply(reply: str, qid: str) -> None:
    assert queue_id(reply) == qid


def test_connect_host_maps_wildcards_to_loopback() -> None:
    assert connect_host("0.0.0.0") == "127.0.0.1" and connect_host("::") == "::1"
    assert connect_host("127.0.0.5") == "127.0.0.5"
