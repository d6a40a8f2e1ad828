# SPDX-License-Identifier: MIT
"""Local delivery end to end: a real ``fastmta serve`` with ``[policy] local_domains``, mail in
over SMTP (``fastmta send``, smtplib) or ``fastmta sendmail``, out into Maildirs; and many
processes writing one mailbox at once."""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import os
import smtplib
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    PYTHON,
    ROOT,
    ServerProcess,
    fastmta_server,
    free_port,
    require_tool,
    run_fastmta,
    traced_message,
    wait_until,
)

LOCAL_CONFIG = """
[[listener]]
address = "127.0.0.1:{port}"

[policy]
local_domains = ["local.test"]

[delivery]
retry_schedule = ["1s"]
"""


@pytest.fixture
def server(make_config: Callable[..., Path], tmp_path: Path) -> Iterator[tuple[ServerProcess, Path, int]]:
    port = free_port()
    users = tmp_path / "users"
    users.write_text("bob\nalice\ncarol\n")
    cfg = make_config(LOCAL_CONFIG.format(port=port) + f'\n[local]\nmaildir = "{tmp_path / "mail"}"\n'
                      f'users_file = "{users}"\n')  # fmt: skip
    with fastmta_server(cfg, ("127.0.0.1", port)) as srv:
        yield srv, cfg, port


def delivered_files(box: Path) -> list[Path]:
    return sorted((box / "new").iterdir()) if (box / "new").is_dir() else []


def wait_files(box: Path, n: int) -> list[Path]:
    wait_until(lambda: len(delivered_files(box)) >= n, what=f"{n} messages in {box}")
    return delivered_files(box)


def log_events(srv: ServerProcess, event: str) -> list[dict[str, object]]:
    return [e for e in map(json.loads, srv.log_lines()) if e.get("event") == event]


def test_send_with_attachments_arrives_intact_in_the_maildir(server: tuple[ServerProcess, Path, int],
                                                             tmp_path: Path) -> None:  # fmt: skip
    srv, cfg, port = server
    blob = tmp_path / "blob.bin"
    blob.write_bytes(bytes(range(256)) * 64 + b"\r\n.\r\n\x00end")
    picture = tmp_path / "pixel.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(3000))
    text = tmp_path / "notes.txt"
    text.write_bytes(b"line one\nline two\r\n.\nlast")
    r = run_fastmta("send", "--config", str(cfg), "--from", "a@x.test", "--to", "Bob+box@local.test",
                    "--cc", "alice@local.test", "--subject", "Grüße & files", "--body", "Hallo Bob, ça va?\n",
                    "--attach", str(blob), "--attach", str(picture), "--attach", str(text))  # fmt: skip
    assert r.returncode == 0, r.stderr
    qid = r.stdout.decode().strip()
    [bob] = wait_files(tmp_path / "mail" / "local.test" / "bob", 1)
    wait_files(tmp_path / "mail" / "local.test" / "alice", 1)
    raw = bob.read_bytes()
    assert raw.startswith(b"Return-Path: <a@x.test>\nDelivered-To: Bob+box@local.test\n")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == "Grüße & files" and msg["To"] == "Bob+box@local.test"
    body = msg.get_body()
    assert body is not None and body.get_content() == "Hallo Bob, ça va?\n"
    parts = {p.get_filename(): p for p in msg.iter_attachments()}
    assert parts["blob.bin"].get_content_type() == "application/octet-stream"
    assert parts["pixel.png"].get_content_type() == "image/png"
    assert parts["notes.txt"].get_content_type() == "text/plain"
    for path in (blob, picture, text):
        assert parts[path.name].get_payload(decode=True) == path.read_bytes()
    # the log line follows the file's rename
    wait_until(lambda: len(log_events(srv, "delivered")) >= 2, what="two delivered log lines")
    assert {e["id"] for e in log_events(srv, "delivered")} == {qid}


def test_sendmail_into_the_spool_of_a_running_server_is_delivered(server: tuple[ServerProcess, Path, int],
                                                                   tmp_path: Path) -> None:  # fmt: skip
    srv, cfg, _ = server
    r = run_fastmta("sendmail", "--config", str(cfg), "-t", "-f", "cron@x.test",
                    input=b"To: carol@local.test\nBcc: bob@local.test\nSubject: cron\n\nout\n")  # fmt: skip
    assert r.returncode == 0, r.stderr
    [carol] = wait_files(tmp_path / "mail" / "local.test" / "carol", 1)
    [bob] = wait_files(tmp_path / "mail" / "local.test" / "bob", 1)
    for path, rcpt in ((carol, b"carol"), (bob, b"bob")):
        data = path.read_bytes()
        assert b"Delivered-To: " + rcpt + b"@local.test\n" in data
        assert b"Bcc" not in data and data.endswith(b"\n\nout\n")


def test_sendmail_mail_gets_its_received_line_in_the_servers_stdout_log(
    server: tuple[ServerProcess, Path, int], tmp_path: Path
) -> None:
    """[log] on stdout (journald, Docker): mail sendmail writes straight into the spool gets its
    "received" lines from the server that takes it in, once, and nothing on sendmail's stdout."""
    srv, cfg, _ = server
    rcpts = ("bob@local.test", "carol@local.test")
    r = run_fastmta("sendmail", "--config", str(cfg), "-f", "cron@x.test", *rcpts, input=b"Subject: c\n\nx\n")
    assert r.returncode == 0 and r.stdout == b"", r.stderr
    wait_until(lambda: len(log_events(srv, "delivered")) >= 2, what="two delivered log lines")
    received = log_events(srv, "received")
    assert sorted((e["rcpt"], e["from"], e["listener"]) for e in received) == [
        ("bob@local.test", "cron@x.test", "sendmail"),
        ("carol@local.test", "cron@x.test", "sendmail"),
    ]
    assert {e["id"] for e in received} == {e["id"] for e in log_events(srv, "delivered")}


def test_unknown_user_gets_5_1_1(server: tuple[ServerProcess, Path, int], tmp_path: Path) -> None:
    """Refused at RCPT when the policy consults the users file, else bounced at delivery."""
    srv, _, port = server
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        refused = c.sendmail("", ["bob@local.test", "mallory@local.test"], b"Subject: x\r\n\r\nbody\r\n")
    wait_files(tmp_path / "mail" / "local.test" / "bob", 1)
    if refused:
        code, text = refused["mallory@local.test"]
        assert code == 550 and text.startswith(b"5.1.1")
    else:

        def bounced() -> list[dict[str, object]]:
            return [e for e in log_events(srv, "bounced") if e["rcpt"] == "mallory@local.test"]

        wait_until(lambda: bool(bounced()), what="mallory's bounce in the log")
        first = bounced()[0]
        assert first["enhanced"] == "5.1.1" and first["bounce_class"] == "invalid_recipient"
    assert not (tmp_path / "mail" / "local.test" / "mallory").exists()


WRITER = """
import sys
from fastmta.delivery.maildir import maildir_write
box, n, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
for i in range(n):
    maildir_write(box, "h", [f"{tag} {i}\\n".encode(), b"x" * 5000])
"""


def test_processes_writing_one_mailbox_never_collide(tmp_path: Path) -> None:
    box = tmp_path / "mail" / "local.test" / "shared"
    procs = [subprocess.Popen([PYTHON, "-c", WRITER, str(box), "60", f"p{n}"], cwd=ROOT) for n in range(6)]
    for p in procs:
        assert p.wait(60) == 0
    files = list((box / "new").iterdir())
    assert len(files) == 360 and len({f.name for f in files}) == 360
    bodies = sorted(f.read_bytes() for f in files)
    assert bodies == sorted(f"p{n} {i}\n".encode() + b"x" * 5000 for n in range(6) for i in range(60))
    assert list((box / "tmp").iterdir()) == []


FULL_DISK = """
import asyncio, json, resource, signal, sys
from fastmta import config
from fastmta.delivery import Destination
from fastmta.delivery.local import LocalDeliverer
from fastmta.spool.records import Envelope, Recipient

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
cfg = config.from_dict({"hostname": "mx.test", "policy": {"local_domains": ["local.test"]},
                        "local": {"maildir": sys.argv[1]}, "metrics": {"address": ""}})

class Spool:
    def body(self, msg_id):
        return b"Subject: s\\r\\n\\r\\n" + (b"x" * 5000 if msg_id == "BIG" else b"ok") + b"\\r\\n"

async def main():
    d = LocalDeliverer(cfg, Spool())
    out = {}
    for msg_id in ("BIG", "SMALL"):
        env = Envelope(msg_id, "a@x.test", [Recipient("bob@local.test")])
        a = await d.deliver(Destination("local", "local.test"), env, [0])
        o = a.outcomes[0]
        out[msg_id] = [type(o).__name__, o.reply.code, o.reply.enhanced]
    await d.close()
    print(json.dumps(out))

asyncio.run(main())
"""


def test_storage_exhausted_defers_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """A real write failure (a file-size limit: EFBIG, as ENOSPC would be) defers with 452 4.3.1."""
    mail = tmp_path / "mail"
    r = subprocess.run([PYTHON, "-c", FULL_DISK, str(mail)], capture_output=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["BIG"] == ["Deferred", 452, "4.3.1"]
    assert out["SMALL"] == ["Delivered", 250, "2.0.0"]
    box = mail / "local.test" / "bob"
    assert len(list((box / "new").iterdir())) == 1 and list((box / "tmp").iterdir()) == []


def test_parallel_sendmail_processes_beside_a_running_server(server: tuple[ServerProcess, Path, int],
                                                             tmp_path: Path) -> None:  # fmt: skip
    """Several injectors and the server's writer share the LMDB spool: every message arrives once."""
    _, cfg, _ = server
    procs = [
        subprocess.Popen(
            [PYTHON, "-m", "fastmta", "sendmail", "-C", str(cfg), "-i", "bob@local.test"],
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )  # fmt: skip
        for _ in range(8)
    ]
    for n, p in enumerate(procs):
        _, err = p.communicate(f"Subject: parallel {n}\n\nbody {n}\n".encode(), timeout=60)
        assert p.returncode == 0, err
    wait_files(tmp_path / "mail" / "local.test" / "bob", 8)
    time.sleep(0.5)  # nothing delivered twice
    files = sorted((tmp_path / "mail" / "local.test" / "bob" / "new").iterdir())
    bodies = sorted(f.read_bytes().rsplit(b"\n\n", 1)[1] for f in files)
    assert bodies == sorted(f"body {n}\n".encode() for n in range(8))


def test_too_many_delivered_to_fields_bounce_5_4_6(server: tuple[ServerProcess, Path, int],
                                                    tmp_path: Path) -> None:  # fmt: skip
    """An alias or .forward loop shows as Delivered-To: fields. sendmail queues without looking;
    local delivery takes what arrived with max_hops (50) of them, bounces one more with 5.4.6."""
    srv, cfg, _ = server
    for n, subject in ((50, "edge"), (51, "looped")):
        r = run_fastmta("sendmail", "--config", str(cfg), "-f", "alice@local.test", "bob@local.test",
                        input=traced_message(0, n, subject))  # fmt: skip
        assert r.returncode == 0, r.stderr
    [dsn] = wait_files(tmp_path / "mail" / "local.test" / "alice", 1)
    [mail] = wait_files(tmp_path / "mail" / "local.test" / "bob", 1)
    assert b"Subject: edge" in mail.read_bytes()
    assert b"Status: 5.4.6" in dsn.read_bytes() and b"Subject: looped" in dsn.read_bytes()
    wait_until(lambda: bool(srv.events("bounced")), what="the bounce in the log")
    [bounced] = srv.events("bounced")
    assert bounced["rcpt"] == "bob@local.test" and bounced["enhanced"] == "5.4.6"
    assert bounced["bounce_class"] == "loop"


DEFAULTS_CONFIG = """
{hostname}
[[listener]]
address = "127.0.0.1:{port}"

[delivery]
retry_schedule = ["1s"]

[dns]
nameservers = ["{dns}"]
timeout = "1s"
"""


@contextlib.contextmanager
def serve_defaults(
    make_config: Callable[..., Path], dns: Any, hostname: str, policy: str = ""
) -> Iterator[tuple[ServerProcess, Path, int]]:
    """A server with the embedded [policy] and [local] defaults (apart from the Maildir's place)."""
    port = free_port()
    text = DEFAULTS_CONFIG.format(hostname=f'hostname = "{hostname}"', port=port, dns=dns.address) + policy
    cfg = make_config(text)
    with fastmta_server(cfg, ("127.0.0.1", port)) as srv:
        yield srv, cfg, port


def test_localhost_and_the_hostname_are_local_by_default(make_config: Callable[..., Path], tmp_path: Path,
                                                        dnsmasq: Callable[..., Any]) -> None:  # fmt: skip
    """No [policy] local_domains: swaks to bob@localhost, smtplib to carol@<hostname> and
    ``fastmta sendmail root`` all land in Maildirs, and not one DNS query is made."""
    dns = dnsmasq()
    with serve_defaults(make_config, dns, "mx.fastmta.test") as (srv, cfg, port):
        swaks = require_tool("swaks")
        r = subprocess.run([swaks, "--server", f"127.0.0.1:{port}", "--from", "a@x.test",
                            "--to", "bob@localhost", "--header", "Subject: swaks"],
                           capture_output=True, timeout=60)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
            assert c.sendmail("a@x.test", ["carol@mx.fastmta.test"], b"Subject: s\r\n\r\nhi\r\n") == {}
        r = run_fastmta("sendmail", "--config", str(cfg), "root", input=b"Subject: cron\n\nout\n")
        assert r.returncode == 0, r.stderr
        [bob] = wait_files(tmp_path / "mail" / "localhost" / "bob", 1)
        assert b"Subject: swaks" in bob.read_bytes()
        wait_files(tmp_path / "mail" / "mx.fastmta.test" / "carol", 1)
        [root] = wait_files(tmp_path / "mail" / "mx.fastmta.test" / "root", 1)
        assert root.read_bytes().endswith(b"\n\nout\n")
        assert "warning" not in srv.stderr()
    assert dns.queries() == []


def test_a_localhost_hostname_is_local_and_warned_about(make_config: Callable[..., Path], tmp_path: Path,
                                                        dnsmasq: Callable[..., Any]) -> None:  # fmt: skip
    """hostname = "localhost" (what getfqdn() gives on many containers): cron's ``root`` becomes
    root@localhost and is delivered; serve warns on stderr about the name it will carry."""
    dns = dnsmasq()
    with serve_defaults(make_config, dns, "localhost") as (srv, cfg, _):
        r = run_fastmta("sendmail", "--config", str(cfg), "root", input=b"Subject: cron\n\nout\n")
        assert r.returncode == 0, r.stderr
        [root] = wait_files(tmp_path / "mail" / "localhost" / "root", 1)
        assert b"Delivered-To: root@localhost\n" in root.read_bytes()
        assert "warning: hostname: is 'localhost'" in srv.stderr()
    assert dns.queries() == []


def test_localhost_left_out_of_local_domains_is_refused_not_resolved(
    make_config: Callable[..., Path], dnsmasq: Callable[..., Any]
) -> None:
    """An explicit local_domains is taken as written; localhost is then refused at RCPT even to a
    relay client, and mail put straight into the spool bounces with 5.1.2, all without DNS."""
    dns = dnsmasq()
    policy = '\n[policy]\nlocal_domains = ["local.test"]\n'
    with serve_defaults(make_config, dns, "mx.fastmta.test", policy) as (srv, cfg, port):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
            c.ehlo("client.test")
            c.mail("a@x.test")
            code, text = c.rcpt("bob@localhost")
            assert (code, text[:5]) == (554, b"5.7.1")
        r = run_fastmta(
            "sendmail", "--config", str(cfg), "-f", "<>", "bob@localhost", input=b"Subject: x\n\ny\n"
        )
        assert r.returncode == 0, r.stderr
        wait_until(lambda: bool(log_events(srv, "bounced")), what="the bounce of bob@localhost")
        [bounce] = log_events(srv, "bounced")
        assert (bounce["rcpt"], bounce["code"], bounce["enhanced"]) == ("bob@localhost", 550, "5.1.2")
    assert dns.queries() == []
