# SPDX-License-Identifier: MIT
"""``fastmta sendmail`` as a real subprocess: spool injection, SMTP fallback, -bs, exit codes.

Exit codes (sysexits.h, as sendmail's): 0 queued; 64 no recipients given (usage);
65 bad message, including ``-t`` finding no recipients; 67 bad address syntax;
75 spool and listener both unavailable; 78 bad configuration.
"""

from __future__ import annotations

import email
import email.policy
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fastmta import config
from fastmta.spool import Spool, admin
from fastmta.spool.records import Envelope
from tests.fixtures.server import queued_id, running
from tests.support import ROOT, fastmta_cmd, free_port, run_fastmta

MSG = b"Subject: test\nTo: Ann <ann@a.test>\nCc: cc@a.test\nBcc: hidden@b.test\n\nline one\n.\nafter dot\n"


def queued(cfg_path: Path) -> list[tuple[Envelope, bytes]]:
    """Every message in the spool, oldest first (read-only, no recovery)."""
    spool = Spool.open(config.load(str(cfg_path)).spool, recover_now=False)
    try:
        out = []
        for _, msg_id in spool.due(4e9, 1000):
            env, body = spool.envelope(msg_id), spool.body(msg_id)
            assert env is not None and body is not None
            out.append((env, body))
        return out
    finally:
        spool.close()


def sendmail(cfg_path: Path, *args: str, input: bytes = MSG) -> subprocess.CompletedProcess[bytes]:
    return run_fastmta("sendmail", "--config", str(cfg_path), *args, input=input, timeout=30)


@pytest.fixture
def cfg(make_config: Callable[..., Path]) -> Path:
    """A config whose spool exists (as after the first ``serve``) and whose listener is down."""
    path = make_config(f'[[listener]]\naddress = "127.0.0.1:{free_port()}"\n')
    admin.open_store(config.load(str(path)).spool).close()
    return path


def test_recipients_from_argv_with_sender_and_headers_added(cfg: Path) -> None:
    r = sendmail(cfg, "-f", "app@fastmta.test", "-F", "The App", "x@c.test, Y <y@c.test>", "-v")
    assert r.returncode == 0, r.stderr
    [(env, body)] = queued(cfg)
    assert env.sender == "app@fastmta.test"
    assert [rc.addr for rc in env.rcpts] == ["x@c.test", "y@c.test"]
    assert b"queued as " + env.id.encode() in r.stderr
    assert b"\n" not in body.replace(b"\r\n", b"")  # CRLF only in the spool
    msg = email.message_from_bytes(body, policy=email.policy.default)
    assert msg["From"] == "The App <app@fastmta.test>"
    assert msg["Message-ID"] == f"<{env.id}@mx.fastmta.test>" and msg["Date"]
    assert msg["Received"].startswith("by mx.fastmta.test (fastmta sendmail, from userid")
    assert msg.get_content() == "line one\r\n"  # without -i a lone "." ends the message
    assert "Bcc" not in msg


def test_t_takes_to_cc_bcc_and_hides_bcc(cfg: Path) -> None:
    r = sendmail(cfg, "-t", "-i")
    assert r.returncode == 0, r.stderr
    [(env, body)] = queued(cfg)
    assert [rc.addr for rc in env.rcpts] == ["ann@a.test", "cc@a.test", "hidden@b.test"]
    assert b"hidden" not in body and b"Bcc" not in body
    assert env.sender.endswith("@mx.fastmta.test")  # the invoking user at the hostname
    assert email.message_from_bytes(body).get_payload() == "line one\r\n.\r\nafter dot\r\n"  # -i: "." is data


def test_null_sender_and_dsn_flags(cfg: Path) -> None:
    r = sendmail(cfg, "-f", "<>", "-N", "never", "-R", "hdrs", "-V", "e1", "z@c.test")
    assert r.returncode == 0, r.stderr
    [(env, body)] = queued(cfg)
    assert env.sender == "" and env.rcpts[0].notify == "NEVER"
    assert env.params["RET"] == "HDRS" and env.params["ENVID"] == "e1"
    assert b"From: MAILER-DAEMON@mx.fastmta.test\r\n" in body


def test_eight_bit_message_is_marked(cfg: Path) -> None:
    r = sendmail(cfg, "-i", "z@c.test", input="Subject: é\n\nüñí\n".encode())
    assert r.returncode == 0, r.stderr
    [(env, body)] = queued(cfg)
    assert env.params["BODY"] == "8BITMIME" and "üñí".encode() in body


@pytest.mark.parametrize(
    ("args", "data", "code"),
    [
        ((), MSG, 64),  # no recipients and no -t
        (("-t",), b"Subject: none\n\nbody\n", 65),  # -t found nobody
        (("-t",), b"To: undisclosed-recipients:;\n\nbody\n", 65),
        (("a@c.test",), b"Subject: a\x00b\n\nbody\n", 65),  # NUL in the header
        (("bad address@c.test",), MSG, 67),
        (("a@c..test",), MSG, 67),
        (("-f", "not an address", "a@c.test"), MSG, 67),
        (("-t",), b"To: a@@c.test\n\nbody\n", 67),
        (("-bd",), MSG, 64),
        (("-Z", "a@c.test"), MSG, 64),
    ],
)
def test_exit_codes_on_bad_input(cfg: Path, args: tuple[str, ...], data: bytes, code: int) -> None:
    r = sendmail(cfg, *args, input=data)
    assert r.returncode == code, r.stderr
    assert r.stderr.startswith(b"sendmail: ")
    assert not (Path(config.load(str(cfg)).spool.path) / "data.mdb").exists() or queued(cfg) == []


def test_message_over_the_size_limit_is_refused(make_config: Callable[..., Path]) -> None:
    cfg = make_config("[limits]\nmax_message_size = 1000\n")
    r = sendmail(cfg, "-i", "a@c.test", input=b"Subject: big\n\n" + b"x" * 2000)
    assert r.returncode == 65


def test_bad_config_is_ex_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[limits]\nmax_recipients = 'many'\n")
    r = sendmail(bad, "a@c.test")
    assert r.returncode == 78 and b"limits.max_recipients" in r.stderr


def test_unusable_spool_and_no_listener_is_tempfail(make_config: Callable[..., Path], tmp_path: Path) -> None:
    (tmp_path / "spool-file").write_bytes(b"")
    cfg = make_config(f'[[listener]]\naddress = "127.0.0.1:{free_port()}"\n'
                      f'[spool]\npath = "{tmp_path / "spool-file"}"\n')  # fmt: skip
    r = sendmail(cfg, "a@c.test")
    assert r.returncode == 75, r.stderr
    assert b"cannot connect" in r.stderr


def test_falls_back_to_the_local_listener(make_config: Callable[..., Path], tmp_path: Path,
                                          sinks: Callable[..., Any]) -> None:  # fmt: skip
    port = free_port()
    sink = sinks("127.0.0.1", port, rcpt={"nobody@c.test": "550 5.1.1 No such user"})
    (tmp_path / "spool-file").write_bytes(b"")
    cfg = make_config(f'[[listener]]\naddress = "0.0.0.0:{port}"\n'
                      f'[spool]\npath = "{tmp_path / "spool-file"}"\n')  # fmt: skip
    r = sendmail(cfg, "-t", "-f", "app@fastmta.test", "nobody@c.test")
    assert r.returncode == 0, r.stderr
    assert b"nobody@c.test: refused: 550" in r.stderr
    [msg] = sink.wait_messages(1)
    assert msg.mail_from == "app@fastmta.test"
    assert sorted(msg.rcpt_tos) == ["ann@a.test", "cc@a.test", "hidden@b.test"]
    assert b"hidden" not in msg.data and b"Message-ID:" in msg.data


def test_missing_spool_is_not_created_and_smtp_is_used(make_config: Callable[..., Path], tmp_path: Path,
                                                       sinks: Callable[..., Any]) -> None:  # fmt: skip
    port = free_port()
    sink = sinks("127.0.0.1", port)
    cfg = make_config(f'[[listener]]\naddress = "127.0.0.1:{port}"\n')
    assert sendmail(cfg, "a@c.test").returncode == 0
    assert len(sink.wait_messages(1)) == 1
    assert not Path(config.load(str(cfg)).spool.path).exists()


def test_fallback_all_recipients_refused(make_config: Callable[..., Path], tmp_path: Path,
                                         sinks: Callable[..., Any]) -> None:  # fmt: skip
    port = free_port()
    sinks("127.0.0.1", port, rcpt_default="550 5.1.1 No such user")
    (tmp_path / "spool-file").write_bytes(b"")
    cfg = make_config(f'[[listener]]\naddress = "127.0.0.1:{port}"\n'
                      f'[spool]\npath = "{tmp_path / "spool-file"}"\n')  # fmt: skip
    assert sendmail(cfg, "a@c.test").returncode == 67


def finals(stdout: bytes) -> list[str]:
    """The last line of every reply (multi-line replies have "-" after the code)."""
    return [ln for ln in stdout.decode().split("\r\n") if len(ln) > 3 and ln[3] == " "]


def test_bs_speaks_smtp_on_stdin_stdout(cfg: Path) -> None:
    dialogue = (
        b"EHLO client.test\r\n"
        b"MAIL FROM:<app@fastmta.test>\r\nRCPT TO:<one@c.test>\r\nRCPT TO:<bad address>\r\n"
        b"RCPT TO:<two@c.test> NOTIFY=NEVER\r\nDATA\r\n"
        b"Subject: via -bs\r\nBcc: two@c.test\r\n\r\n..leading dot\r\nbody\r\n.\r\n"
        b"DATA\r\nVRFY x\r\nNOOP\r\nFOO\r\nQUIT\r\n"
    )
    r = sendmail(cfg, "-bs", input=dialogue)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"220 mx.fastmta.test ESMTP fastmta\r\n250-mx.fastmta.test\r\n")
    assert b"250-PIPELINING\r\n" in r.stdout and b"CHUNKING" in r.stdout and b"STARTTLS" not in r.stdout
    got = finals(r.stdout)[2:]  # past the greeting and EHLO
    assert [f[:3] for f in got] == [
        "250",
        "250",
        "501",
        "250",
        "354",
        "250",
        "503",
        "252",
        "250",
        "500",
        "221",
    ]
    [(env, body)] = queued(cfg)
    assert got[5] == f"250 2.0.0 Ok: queued as {env.id}"
    assert env.sender == "app@fastmta.test" and [rc.addr for rc in env.rcpts] == ["one@c.test", "two@c.test"]
    assert [rc.notify for rc in env.rcpts] == ["", "NEVER"]
    assert b"\r\n.leading dot\r\nbody\r\n" in body and b"Bcc" not in body
    assert body.startswith(b"Received: by mx.fastmta.test (fastmta sendmail, from userid")
    assert body.count(b"Received:") == 1


def test_bs_bdat_chunks(cfg: Path) -> None:
    dialogue = (
        b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n"
        b"BDAT 20\r\nSubject: chunked\r\n\r\nBDAT 6 LAST\r\nbody\r\nQUIT\r\n"
    )
    r = sendmail(cfg, "-bs", input=dialogue)
    assert r.returncode == 0, r.stderr
    assert [f[:3] for f in finals(r.stdout)[2:]] == ["250", "250", "250", "250", "221"]
    [(_, body)] = queued(cfg)
    assert b"Subject: chunked\r\n" in body and body.endswith(b"\r\n\r\nbody\r\n")


def test_bs_takes_lf_line_ends_from_local_scripts(cfg: Path) -> None:
    dialogue = b"HELO x\nMAIL FROM:<a@b.test>\nRCPT TO:<c@d.test>\nDATA\nSubject: lf\n\nbody\n.\nQUIT\n"
    r = sendmail(cfg, "-bs", input=dialogue)
    assert r.returncode == 0, r.stderr
    assert [f[:3] for f in finals(r.stdout)] == ["220", "250", "250", "250", "354", "250", "221"]
    [(_, body)] = queued(cfg)
    assert b"Subject: lf\r\n" in body and body.endswith(b"\r\n\r\nbody\r\n")


POOL = '[[pool]]\nname = "bulk"\nsources = [ { address = "127.0.0.3", ehlo = "mta3.fastmta.test" } ]\n'
TAGGED = (
    b"HELO x\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n"
    b"X-Fastmta-Pool: bulk\r\nX-Fastmta-Tenant: acme\r\nSubject: tagged\r\n\r\nbody\r\n.\r\nQUIT\r\n"
)


def test_bs_passes_pool_and_tenant_into_the_spool(make_config: Callable[..., Path]) -> None:
    path = make_config(f'[[listener]]\naddress = "127.0.0.1:{free_port()}"\n{POOL}')
    admin.open_store(config.load(str(path)).spool).close()
    r = sendmail(path, "-bs", input=TAGGED)
    assert [f[:3] for f in finals(r.stdout)] == ["220", "250", "250", "250", "354", "250", "221"], r.stdout
    [(env, body)] = queued(path)
    assert (env.pool, env.tenant) == ("bulk", "acme")
    assert b"X-Fastmta" not in body and b"Subject: tagged\r\n" in body


def test_bs_passes_pool_and_tenant_to_the_listener(make_config: Callable[..., Path], tmp_path: Path) -> None:
    """Without a usable spool the message goes to the local listener, the tags as headers again."""
    (tmp_path / "spool-file").write_bytes(b"")
    with running(tmp_path / "serve", POOL) as srv:
        path = make_config(f'[[listener]]\naddress = "127.0.0.1:{srv.port}"\n{POOL}'
                           f'[spool]\npath = "{tmp_path / "spool-file"}"\n')  # fmt: skip
        r = sendmail(path, "-bs", input=TAGGED)
        assert r.returncode == 0, r.stderr
        msg_id = queued_id(finals(r.stdout)[-2])
        env = srv.envelope(msg_id)
        assert (env.pool, env.tenant) == ("bulk", "acme")
        assert b"X-Fastmta" not in srv.body(msg_id)


def test_bs_eof_inside_data_queues_nothing(cfg: Path) -> None:
    r = sendmail(
        cfg, "-bs", input=b"HELO x\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\npartial\r\n"
    )
    assert r.returncode == 75
    assert not (Path(config.load(str(cfg)).spool.path) / "data.mdb").exists() or queued(cfg) == []


def test_installed_as_sendmail_symlink(cfg: Path, tmp_path: Path) -> None:
    """The documented install: a symlink named ``sendmail`` to the ``fastmta`` script."""
    script = Path(fastmta_cmd()[0]).parent / "fastmta"
    assert script.exists(), "the fastmta console script is installed with the package"
    link = tmp_path / "sendmail"
    link.symlink_to(script)
    r = subprocess.run([str(link), "-C", str(cfg), "-t", "-oi"], input=MSG, capture_output=True, timeout=30,
                       cwd=ROOT)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert len(queued(cfg)) == 1


def test_bp_and_mailq_list_the_queue(cfg: Path, tmp_path: Path) -> None:
    assert sendmail(cfg, "-t").returncode == 0
    [(env, _)] = queued(cfg)
    r = sendmail(cfg, "-bp", input=b"")
    assert r.returncode == 0, r.stderr
    [line] = [ln for ln in r.stdout.splitlines() if ln.startswith(env.id.encode())]
    assert line.split()[5] == b"3" and line.endswith(f"<{env.sender}>".encode())  # one line, 3 recipients
    mailq = tmp_path / "mailq"
    mailq.symlink_to(Path(fastmta_cmd()[0]).parent / "fastmta")
    r = subprocess.run([str(mailq), "-C", str(cfg)], capture_output=True, timeout=30, cwd=ROOT)
    assert r.returncode == 0 and env.id.encode() in r.stdout, r.stderr


def test_newaliases_is_a_no_op(tmp_path: Path) -> None:
    link = tmp_path / "newaliases"
    link.symlink_to(Path(fastmta_cmd()[0]).parent / "fastmta")
    assert subprocess.run([str(link)], capture_output=True, timeout=30, cwd=ROOT).returncode == 0


def test_received_line_goes_to_a_delivery_log_file(make_config: Callable[..., Path], tmp_path: Path) -> None:
    log = tmp_path / "delivery.log"
    cfg = make_config(f'[log]\nfile = "{log}"\n')
    admin.open_store(config.load(str(cfg)).spool).close()
    assert sendmail(cfg, "-f", "cron@x.test", "a@c.test", "b@c.test").returncode == 0
    [(env, _)] = queued(cfg)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["event"], e["id"], e["from"], e["rcpt"]) for e in lines] == [
        ("received", env.id, "cron@x.test", "a@c.test"),
        ("received", env.id, "cron@x.test", "b@c.test"),
    ]
    assert lines[0]["listener"] == "sendmail" and lines[0]["size"] == env.size
