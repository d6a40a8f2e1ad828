# SPDX-License-Identifier: MIT
"""The session state machine without a socket: (state, command) → reply and action."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import pytest

from fastmta.config import from_dict
from fastmta.errors import SpoolFullError, SpoolUnavailableError
from fastmta.smtp import replies as R
from fastmta.smtp import session as S
from fastmta.smtp.auth import Users
from fastmta.smtp.policy import AuthFailures, Policy


@dataclass
class FakeSettings:
    """Implements session.Settings with plain values (no listener, no spool)."""

    hostname: str = "mx.test"
    listener: str = "mx"
    submission: bool = False
    starttls: bool = True
    max_size: int = 1000
    max_line: int = 512
    max_recipients: int = 2
    max_errors: int = 3
    policy: Policy = field(
        default_factory=lambda: Policy(from_dict({"policy": {"relay_domains": ["in.test"]}}))
    )
    users: Users = field(default_factory=lambda: Users({"u": lambda pw: pw == b"p"}))
    auth_failures: AuthFailures = field(default_factory=lambda: AuthFailures(2))
    unhealthy_reason: str | None = None
    rejections: list[str] = field(default_factory=list)
    ids: int = 0

    def new_id(self) -> str:
        self.ids += 1
        return f"ID{self.ids}"

    def unhealthy(self) -> str | None:
        return self.unhealthy_reason

    def ehlo_reply(self, starttls: bool, auth: bool) -> bytes:
        return R.ehlo(self.hostname, ["PIPELINING"] + ["STARTTLS"] * starttls + ["AUTH PLAIN LOGIN"] * auth)

    def rejected(self, reason: str) -> None:
        self.rejections.append(reason)


def run(s: S.Session, line: bytes) -> tuple[bytes, S.Action | None]:
    """Feed one line the way protocol.py does (BDAT chunks included); return replies and action."""
    act = s.line(line)
    if act is not None and act[0] == S.A_BDAT:
        act2 = s.bdat_chunk()
        if act[2]:
            act2 = s.data_end(b"x" * act[1])
        act = act2 or act
    out = b"".join(s.out)
    s.out.clear()
    return out, act


SETUP = {
    S.S_INIT: [],
    S.S_READY: [b"EHLO c.test"],
    S.S_MAIL: [b"EHLO c.test", b"MAIL FROM:<a@x.test>"],
    S.S_RCPT: [b"EHLO c.test", b"MAIL FROM:<a@x.test>", b"RCPT TO:<b@y.test>"],
    S.S_BDAT: [b"EHLO c.test", b"MAIL FROM:<a@x.test>", b"RCPT TO:<b@y.test>", b"BDAT 1"],
}
COMMANDS = [b"EHLO c.test", b"HELO c.test", b"MAIL FROM:<a@x.test>", b"RCPT TO:<b@y.test>", b"DATA",
            b"BDAT 1", b"RSET", b"NOOP", b"QUIT", b"HELP", b"VRFY x", b"EXPN x", b"STARTTLS",
            b"AUTH PLAIN", b"FOO"]  # fmt: skip
#                  EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY EXPN STLS AUTH FOO
EXPECTED = {
    S.S_INIT:  [250, 250, 503, 503, 503, 503, 250, 250, 221, 214, 252, 502, 503, 503, 500],
    S.S_READY: [250, 250, 250, 503, 503, 503, 250, 250, 221, 214, 252, 502, 220, 538, 500],
    S.S_MAIL:  [250, 250, 503, 250, 503, 503, 250, 250, 221, 214, 252, 502, 503, 503, 500],
    S.S_RCPT:  [250, 250, 503, 250, 354, 250, 250, 250, 221, 214, 252, 502, 503, 503, 500],
    S.S_BDAT:  [503, 503, 503, 503, 503, 250, 250, 250, 221, 503, 503, 503, 503, 503, 500],
}  # fmt: skip


def session_in(state: int, cfg: FakeSettings | None = None, ip: str = "127.0.0.1") -> S.Session:
    s = S.Session(cfg or FakeSettings(), ip)
    for line in SETUP[state]:
        run(s, line)
    assert s.state == state
    return s


@pytest.mark.parametrize("state", sorted(EXPECTED))
@pytest.mark.parametrize("index", range(len(COMMANDS)))
def test_state_table(state: int, index: int) -> None:
    s = session_in(state)
    out, _ = run(s, COMMANDS[index])
    assert int(out[:3]) == EXPECTED[state][index], (S.STATE_NAMES[state], COMMANDS[index], out)
    if out[:1] in (b"4", b"5") and out[:3] != b"538":
        assert out[3:4] == b" " and out[4:5] in (b"4", b"5")  # enhanced code on every error


def test_every_move_goes_through_the_table() -> None:
    s = session_in(S.S_INIT)
    with pytest.raises(S.IllegalTransition):
        s._set_state(S.S_COMMIT)
    for state, moves in S.MOVES.items():
        assert state in moves or state in (S.S_DATA, S.S_COMMIT, S.S_AUTH, S.S_TLS)


def test_commit_flow_and_received_header() -> None:
    s = session_in(S.S_RCPT)
    out, act = run(s, b"DATA")
    assert out == R.R_354_DATA and act == (S.A_DATA,)
    act = s.data_end(b"Subject: x\r\n\r\nbody\r\n")
    assert act is not None and act[0] == S.A_COMMIT and s.state == S.S_COMMIT
    _, msg_id, txn, received, body = act
    data = received + body
    assert msg_id == "ID1" and txn.sender == "a@x.test" and txn.rcpts == [("b@y.test", "", "")]
    head, _, rest = data.partition(b"Subject:")
    assert head.startswith(
        b"Received: from c.test ([127.0.0.1])\r\n\tby mx.test (fastmta) with ESMTP id ID1\r\n"
    )
    assert b"\tfor <b@y.test>; " in head and rest.endswith(b"body\r\n")
    s.commit_done(msg_id)
    assert s.out == [R.queued("ID1")] and s.state == S.S_READY and s.txn is None


@pytest.mark.parametrize(("error", "reply"), [(SpoolFullError(), R.R_452_STORAGE),
                                              (SpoolUnavailableError(), R.R_451_LOCAL_ERROR),
                                              (RuntimeError("x"), R.R_451_LOCAL_ERROR)])  # fmt: skip
def test_commit_failures(error: BaseException, reply: bytes) -> None:
    s = session_in(S.S_RCPT)
    run(s, b"DATA")
    s.data_end(b"")
    s.commit_failed(error)
    assert s.out == [reply] and s.state == S.S_READY


def test_unhealthy_spool_refuses_before_data() -> None:
    cfg = FakeSettings(unhealthy_reason="disk nearly full")
    s = session_in(S.S_RCPT, cfg)
    assert run(s, b"DATA") == (R.R_452_STORAGE, None)
    out, act = run(s, b"BDAT 3 LAST")
    assert out == R.R_452_STORAGE and s.state == S.S_READY


def test_smuggling_and_size_reset_the_transaction() -> None:
    s = session_in(S.S_RCPT)
    run(s, b"DATA")
    assert s.data_bare_lf() is None and s.out == [R.R_550_SMUGGLING] and s.state == S.S_READY
    s.out.clear()
    run(s, b"MAIL FROM:<a@x.test>")
    run(s, b"RCPT TO:<b@y.test>")
    run(s, b"DATA")
    s.data_too_big()
    assert s.out == [R.R_552_TOO_BIG] and s.state == S.S_READY


def test_errors_limit() -> None:
    s = session_in(S.S_INIT)
    for _ in range(3):
        assert run(s, b"BAD")[0].startswith(b"500")
    out, act = run(s, b"BAD")
    assert out == R.R_421_TOO_MANY_ERRORS and act == (S.A_CLOSE,) and s.state == S.S_CLOSED


def test_relay_and_recipient_limit() -> None:
    s = session_in(S.S_MAIL, ip="192.0.2.1")
    assert run(s, b"RCPT TO:<x@out.test>")[0] == R.R_554_RELAY_DENIED
    assert run(s, b"RCPT TO:<x@IN.test>")[0] == R.R_250_RCPT_OK
    assert run(s, b"RCPT TO:<postmaster>")[0] == R.R_250_RCPT_OK
    assert run(s, b"RCPT TO:<y@in.test>")[0] == R.R_452_TOO_MANY_RCPTS
    assert s.txn is not None and [r[0] for r in s.txn.rcpts] == ["x@IN.test", "postmaster@mx.test"]


def test_submission_requires_auth_and_auth_flow() -> None:
    cfg = FakeSettings(submission=True)
    s = S.Session(cfg, "192.0.2.1", tls="TLSv1.3 TLS_AES_128_GCM_SHA256")
    out, _ = run(s, b"EHLO c.test")
    assert b"AUTH PLAIN LOGIN" in out and b"STARTTLS" not in out
    assert run(s, b"MAIL FROM:<a@x.test>")[0] == R.R_530_AUTH_REQUIRED
    assert run(s, b"AUTH LOGIN")[0] == R.R_334_USERNAME
    assert run(s, b"dQ==")[0] == R.R_334_PASSWORD
    out, act = run(s, b"cA==")
    assert act == (S.A_AUTH, "u", "p") and s.state == S.S_AUTH
    s.auth_done(True, "u")
    assert s.out == [R.R_235_AUTH_OK] and s.user == "u"
    s.out.clear()
    assert run(s, b"MAIL FROM:<a@x.test>")[0] == R.R_250_SENDER_OK
    assert run(s, b"RCPT TO:<x@anywhere.test>")[0] == R.R_250_RCPT_OK  # authenticated: may relay
    run(s, b"DATA")
    _, _, _, data, _ = s.data_end(b"")  # type: ignore[misc]
    assert b"with ESMTPSA id" in data and b"(using TLSv1.3 with cipher TLS_AES_128_GCM_SHA256)" in data


def test_auth_failure_then_block() -> None:
    cfg = FakeSettings()
    s = S.Session(cfg, "192.0.2.9", tls="TLSv1.3 X")
    run(s, b"EHLO c.test")
    run(s, b"AUTH PLAIN AHUAcQ==")
    assert s.auth_done(False, "u") is None and s.out == [R.R_535_AUTH_FAILED]
    s.out.clear()
    cfg.auth_failures.failed("192.0.2.9")
    cfg.auth_failures.failed("192.0.2.9")
    out, act = run(s, b"AUTH PLAIN AHUAcQ==")
    assert out == R.R_421_AUTH_LIMIT and act == (S.A_CLOSE,)


def test_auth_lines_may_pass_max_line_where_auth_is_offered() -> None:
    """RFC 4954 §4: the parser lets AUTH lines through up to auth.MAX_LINE; the session
    holds every other line (and AUTH where it is not offered) to max_line."""
    long_pw = base64.b64encode(b"\0u\0" + b"p" * 600)
    plain = S.Session(FakeSettings(), "192.0.2.1")
    run(plain, b"EHLO c.test")
    assert run(plain, b"AUTH PLAIN " + long_pw)[0] == R.R_500_LINE_TOO_LONG  # not offered: no TLS
    s = S.Session(FakeSettings(), "192.0.2.1", tls="TLSv1.3 X")
    run(s, b"EHLO c.test")
    assert run(s, b"NOOP " + b"x" * 506)[0] == R.R_500_LINE_TOO_LONG  # 511 + CRLF > 512
    assert run(s, b"NOOP " + b"x" * 505)[0] == R.R_250_OK  # exactly 512 with the CRLF
    assert run(s, b"AUTH PLAIN " + long_pw)[1] == (S.A_AUTH, "u", "p" * 600)
    s.auth_done(False, "u")
    s.out.clear()
    assert run(s, b"AUTH PLAIN")[0] == R.R_334_EMPTY
    assert run(s, long_pw)[1] == (S.A_AUTH, "u", "p" * 600)  # a continuation line too
    s.auth_done(True, "u")
    s.out.clear()
    assert run(s, b"AUTH PLAIN " + long_pw)[0] == R.R_500_LINE_TOO_LONG  # offered no more


def test_starttls_then_reset() -> None:
    s = session_in(S.S_READY)
    out, act = run(s, b"STARTTLS")
    assert out == R.R_220_TLS_GO and act == (S.A_STARTTLS,) and s.state == S.S_TLS
    s.tls_started("TLSv1.3 TLS_AES_256_GCM_SHA384")
    assert s.state == S.S_INIT and not s.helo
    out, _ = run(s, b"EHLO c.test")
    assert b"STARTTLS" not in out and b"AUTH PLAIN LOGIN" in out


def test_bdat_sequence_and_rset() -> None:
    s = session_in(S.S_RCPT)
    assert s.line(b"BDAT 4") == (S.A_BDAT, 4, False)
    s.bdat_chunk()
    assert s.out == [R.chunk_ok(4)]
    s.out.clear()
    assert s.line(b"RSET") == (S.A_RESET_BODY,) and s.state == S.S_READY
    for bad in (b"BDAT", b"BDAT x", b"BDAT 1 NOTLAST"):
        t = session_in(S.S_RCPT)
        assert t.line(bad) == (S.A_CLOSE,) and t.out == [R.R_501_SYNTAX]


def test_bdat_over_size_is_read_then_refused() -> None:
    s = session_in(S.S_RCPT)
    assert s.line(b"BDAT 600") == (S.A_BDAT, 600, False)
    s.bdat_chunk()
    assert s.line(b"BDAT 600") == (S.A_BDAT, 600, True)  # the chunk is still consumed
    s.bdat_chunk()
    s.data_too_big()
    assert s.out[-1] == R.R_552_TOO_BIG and s.state == S.S_READY


def test_timeout_and_helo_name_sanitised() -> None:
    s = session_in(S.S_INIT)
    run(s, "EHLO bad(name)\x01ü".encode())
    assert s.helo == "bad?name???"
    assert s.timeout() == (S.A_CLOSE,) and s.out == [R.R_421_TIMEOUT]
