# SPDX-License-Identifier: MIT
"""``fastmta send`` as a real subprocess: MIME composition, STARTTLS, AUTH, queue ids, exit
codes; and a binary attachment relayed through a real ``fastmta serve`` to a sink intact."""

from __future__ import annotations

import email
import email.policy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import fastmta_server, free_port, run_fastmta, wait_until


def send(*args: str, env: dict[str, str] | None = None, input: bytes | None = None) -> Any:
    return run_fastmta("send", *args, env=env, input=input, timeout=30)


def parse(data: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def body_text(msg: email.message.EmailMessage, *kinds: str) -> str:
    """The text of the body part ``get_body`` picks (plain before html by default)."""
    part = msg.get_body(kinds or ("related", "html", "plain"))
    assert part is not None
    text = part.get_content()
    assert isinstance(text, str)
    return text


def test_binary_attachment_relayed_through_fastmta_arrives_intact(
    make_config: Callable[..., Path], sinks: Callable[..., Any], tmp_path: Path
) -> None:
    sink_port = free_port()
    sink = sinks("127.0.0.1", sink_port)
    port = free_port()
    cfg = make_config(f'[[listener]]\naddress = "127.0.0.1:{port}"\n[delivery]\ntls = "none"\n'
                      f'[[route]]\ndomain = "*"\nnexthop = "127.0.0.1:{sink_port}"\n')  # fmt: skip
    blob = tmp_path / "random.bin"
    blob.write_bytes(bytes(range(256)) * 300 + b"\r\n.\r\n.." + b"\x00" * 100)
    audio = tmp_path / "sound.wav"
    audio.write_bytes(b"RIFF" + bytes(4000))
    with fastmta_server(cfg, ("127.0.0.1", port)) as srv:
        r = send("--config", str(cfg), "--from", "me@fastmta.test", "--to", "you@remote.test",
                 "--bcc", "hidden@remote.test", "--subject", "binary", "--attach", str(blob),
                 "--attach", str(audio), "--header", "X-Test: 1", input=b"stdin body\n")  # fmt: skip
        assert r.returncode == 0, r.stderr
        qid = r.stdout.decode().strip()
        [got] = sink.wait_messages(1, timeout=30)
        wait_until(
            lambda: any('"delivered"' in line for line in srv.log_lines()), what="the delivered log line"
        )
        delivered = [json.loads(line) for line in srv.log_lines() if '"delivered"' in line]
    assert {e["id"] for e in delivered} == {qid}
    assert sorted(got.rcpt_tos) == ["hidden@remote.test", "you@remote.test"]
    msg = parse(got.data)
    assert "Bcc" not in msg and msg["X-Test"] == "1" and msg["Subject"] == "binary"
    assert body_text(msg) == "stdin body\r\n"  # the wire form keeps CRLF
    parts = {p.get_filename(): p for p in msg.iter_attachments()}
    assert parts["random.bin"].get_payload(decode=True) == blob.read_bytes()
    assert parts["sound.wav"].get_content_maintype() == "audio"
    assert parts["sound.wav"].get_payload(decode=True) == audio.read_bytes()


def test_starttls_and_auth_with_password_from_env(sinks: Callable[..., Any], tls_ca_file: str) -> None:
    port = free_port()
    sink = sinks("127.0.0.1", port, starttls=True, auth={"alice": "s3cret-pw"}, tls_names=("localhost",))
    r = send("--server", f"localhost:{port}", "--tls", "--cafile", tls_ca_file, "--auth", "alice",
             "--from", "alice@fastmta.test", "--to", "bob@remote.test", "--body", "hi",
             env={"FASTMTA_PASSWORD": "s3cret-pw"})  # fmt: skip
    assert r.returncode == 0, r.stderr
    [got] = sink.wait_messages(1)
    assert got.tls and got.auth_user == "alice"
    assert b"s3cret-pw" not in r.stdout + r.stderr
    assert all("s3cret" not in c for c in sink.commands)


def test_tls_certificate_is_verified(sinks: Callable[..., Any]) -> None:
    port = free_port()
    sinks("127.0.0.1", port, starttls=True, tls_names=("localhost",))
    args = ("--server", f"localhost:{port}", "--tls", "--from", "a@x.test", "--to", "b@y.test", "--body", "x")
    assert send(*args).returncode == 69  # the test CA is unknown to the system store
    assert send(*args, "--insecure").returncode == 0


def test_wrong_password_is_ex_noperm(sinks: Callable[..., Any]) -> None:
    port = free_port()
    sinks("127.0.0.1", port, auth={"alice": "right"})
    r = send("--server", f"127.0.0.1:{port}", "--auth", "alice", "--from", "a@x.test", "--to", "b@y.test",
             "--body", "x", env={"FASTMTA_PASSWORD": "wrong"})  # fmt: skip
    assert r.returncode == 77 and b"wrong" not in r.stderr


def test_dry_run_prints_the_mime_message(tmp_path: Path) -> None:
    pic = tmp_path / "a.jpg"
    pic.write_bytes(b"\xff\xd8\xff" + bytes(100))
    html = tmp_path / "body.html"
    html.write_text("<p>Grüße</p>")
    r = send("--dry-run", "--from", "a@x.test", "--to", "b@y.test", "--cc", "c@y.test", "--subject", "s",
             "--body", "text", "--html", str(html), "--attach", str(pic))  # fmt: skip
    assert r.returncode == 0, r.stderr
    msg = parse(r.stdout)
    assert msg["To"] == "b@y.test" and msg["Cc"] == "c@y.test" and msg["Message-ID"] and msg["Date"]
    [att] = msg.iter_attachments()
    assert att.get_content_type() == "image/jpeg" and att.get_payload(decode=True) == pic.read_bytes()
    assert body_text(msg, "html").strip() == "<p>Grüße</p>"
    assert body_text(msg, "plain").strip() == "text"
    assert b"\r\n" in r.stdout and b"\n" not in r.stdout.replace(b"\r\n", b"")


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("--from", "a@x.test", "--body", "x"), 64),  # no recipients
        (("--to", "bad address", "--body", "x"), 67),
        (("--to", "b@y.test", "--body", "x", "--attach", "/nonexistent/file"), 66),
        (("--to", "b@y.test", "--body", "x", "--server", "host:notaport"), 64),
        (("--to", "b@y.test", "--body", "x", "--header", "no colon"), 65),
        (("--bogus",), 64),
    ],
)
def test_exit_codes_on_bad_input(args: tuple[str, ...], code: int) -> None:
    r = send(*args)
    assert r.returncode == code, r.stderr


def test_refusals_map_to_sendmail_codes(sinks: Callable[..., Any]) -> None:
    port = free_port()
    sink = sinks("127.0.0.1", port, rcpt={"gone@y.test": "550 5.1.1 No such user"})
    base = ("--server", f"127.0.0.1:{port}", "--from", "a@x.test", "--body", "x")
    assert send(*base, "--to", "gone@y.test").returncode == 67
    r = send(*base, "--to", "gone@y.test", "--to", "ok@y.test")
    assert r.returncode == 0 and b"gone@y.test: refused: 550" in r.stderr
    sink.script.rcpt_default = "451 4.3.0 Try later"
    assert send(*base, "--to", "later@y.test").returncode == 75
    sink.script.rcpt_default = None
    sink.script.data = "554 5.6.0 Content rejected"
    assert send(*base, "--to", "ok@y.test").returncode == 65
    assert send("--server", f"127.0.0.1:{free_port()}", "--to", "b@y.test", "--body", "x").returncode == 75


def test_default_server_is_the_first_listener(
    make_config: Callable[..., Path], sinks: Callable[..., Any]
) -> None:
    port = free_port()
    sink = sinks("127.0.0.1", port)
    cfg = make_config(f'[[listener]]\naddress = "0.0.0.0:{port}"\n')
    r = send("--config", str(cfg), "--to", "b@y.test", "--body", "x")
    assert r.returncode == 0, r.stderr
    [got] = sink.wait_messages(1)
    assert got.mail_from.endswith("@mx.fastmta.test")


def test_implicit_tls_listener_is_used_by_default(make_config: Callable[..., Path], tls_ca: Any,
                                                  tls_ca_file: str, tmp_path: Path) -> None:  # fmt: skip
    """``--config`` alone: the first listener, with its implicit TLS, verified against --cafile."""
    cert = tls_ca.issue_cert("127.0.0.1", "mx.fastmta.test")
    pem = tmp_path / "server.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    port = free_port()
    cfg = make_config(f'[[listener]]\naddress = "127.0.0.1:{port}"\ntls = "implicit"\n'
                      f'[tls]\ncert_file = "{pem}"\nkey_file = "{pem}"\n'
                      '[delivery]\nhold = true\n')  # fmt: skip
    with fastmta_server(cfg, ("127.0.0.1", port)):
        r = send("--config", str(cfg), "--cafile", tls_ca_file, "--to", "b@remote.test", "--body", "x")
        assert r.returncode == 0, r.stderr
        qid = r.stdout.decode().strip()
        listed = run_fastmta("queue", "list", "--config", str(cfg), "--json", timeout=30)
    assert qid in listed.stdout.decode()
