# SPDX-License-Identifier: MIT
"""The session state machine without a socket: (state, command) → reply and action."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from fastmta.errors import SpoolFullError, SpoolUnavailableError
from fastmta.smtp import replies as R
from fastmta.smtp import session as S
from fastmta.smtp.headers import MAX_HEAD, missing_fields
from tests.fixtures.session import FakeSettings
from tests.support import traced_message


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


class _Recording(S.Session):
    """A session that notes every state change it makes (no __slots__: it may carry more)."""

    def __init__(self, cfg: FakeSettings, tls: str, seen: set[tuple[int, int]]) -> None:
        super().__init__(cfg, "127.0.0.1", tls)
        self.seen = seen
        self.pending: S.Action | None = None  # an A_AUTH the protocol has not answered yet

    def _set_state(self, new: int) -> None:
        old = self.state
        super()._set_state(new)
        self.seen.add((old, new))


# Lines beyond COMMANDS that reach other branches: AUTH and its SASL responses ("u", "p",
# cancel, bad base64), BDAT LAST and bad BDAT syntax, an over-size MAIL, a refused relay,
# arguments where none belong.
_LINES = [*COMMANDS, b"AUTH PLAIN AHUAcA==", b"AUTH LOGIN", b"dQ==", b"cA==", b"*", b"!!", b"BDAT 1 LAST",
          b"BDAT 2000", b"BDAT x", b"MAIL FROM:<a@x.test> SIZE=5000", b"RCPT TO:<b@elsewhere.test>",
          b"DATA x", b"STARTTLS x", b"EHLO"]  # fmt: skip


def _events(s: _Recording) -> list[str]:
    """What protocol.py may hand the session in its state (names for _apply): nothing after
    a close, and only the answer while it waits for the spool, an AUTH check or TLS."""
    if s.state == S.S_CLOSED:
        return []
    if s.state == S.S_COMMIT:
        return ["commit_done", "commit_full", "commit_error"]
    if s.pending is not None:
        return ["auth_ok", "auth_bad"]
    if s.state == S.S_DATA:
        return ["data_end", "data_too_big", "data_bare_lf", "timeout"]
    if s.state == S.S_TLS:
        return ["tls_started"]  # no timeout while the handshake runs: a failure just closes
    return [f"line:{i}" for i in range(len(_LINES))] + ["line_too_long", "timeout"]


def _apply(s: _Recording, event: str) -> None:
    kind, _, arg = event.partition(":")
    if kind == "line":
        _, act = run(s, _LINES[int(arg)])
        s.pending = act if act is not None and act[0] == S.A_AUTH else None
    elif kind == "commit_done":
        s.commit_done("ID")
    elif kind in ("commit_full", "commit_error"):
        s.commit_failed(SpoolFullError() if kind == "commit_full" else RuntimeError("x"))
    elif kind in ("auth_ok", "auth_bad"):
        s.pending = None
        s.auth_done(kind == "auth_ok", "u")
    elif kind == "data_end":
        s.data_end(b"Subject: x\r\n\r\nbody\r\n")
    elif kind == "tls_started":
        s.tls_started("TLSv1.3")
    else:
        getattr(s, kind)()
    s.out.clear()


def _explore(cfg: dict[str, Any], tls: str, seen: set[tuple[int, int]]) -> None:
    """Breadth first from a new session, one path per distinct situation, until no event
    leads anywhere new (situations are finite: errors, recipients and names are bounded)."""
    shared = FakeSettings(**cfg)  # its Users hashes a dummy password: build it once

    def replay(path: tuple[str, ...]) -> _Recording:
        fresh = FakeSettings(**cfg, users=shared.users, policy=shared.policy)
        s = _Recording(fresh, tls, seen)
        for event in path:
            _apply(s, event)
        return s

    frontier: list[tuple[str, ...]] = [()]
    situations: set[tuple[object, ...]] = set()
    while frontier:
        nxt = []
        for path in frontier:
            for event in _events(replay(path)):
                s = replay((*path, event))
                # Not the error count: max_errors = 0 below covers closing on errors.
                key = (s.state, s.helo, s.tls, s.user, s.txn is not None and len(s.txn.rcpts),
                       s._bdat_refusal, s._sasl_mech, s._sasl_user, s.pending is not None)  # fmt: skip
                if key not in situations:
                    situations.add(key)
                    nxt.append((*path, event))
        frontier = nxt


def test_every_state_change_of_a_real_dialogue_is_in_the_table() -> None:
    """Drive sessions through every event protocol.py can deliver in each state they reach
    (plain and TLS, healthy and unhealthy spool, sender restrictions): every state change
    they make is listed in MOVES (``_set_state`` raises otherwise), and each listed move is
    made by some dialogue, so the table allows nothing the session never does."""
    seen: set[tuple[int, int]] = set()
    for cfg in ({}, {"unhealthy_reason": "full"}, {"submission": True}, {"max_errors": 0}):
        for tls in ("", "TLSv1.3"):
            _explore(cfg, tls, seen)
    listed = {(a, b) for a, moves in S.MOVES.items() for b in moves}
    name = S.STATE_NAMES
    assert sorted(f"{name[a]}->{name[b]}" for a, b in listed - seen) == []


@pytest.mark.parametrize("start", sorted(S.MOVES))
def test_set_state_refuses_every_move_not_in_the_table(start: int) -> None:
    s = session_in(S.S_INIT)
    for target in range(len(S.STATE_NAMES)):
        s.state = start
        if target in S.MOVES[start]:
            s._set_state(target)
            assert s.state == target
        else:
            with pytest.raises(S.IllegalTransition):
                s._set_state(target)
            assert s.state == start


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


@pytest.mark.parametrize("verb", [b"DATA", b"BDAT"])
def test_too_many_hops_at_reception(verb: bytes) -> None:
    """max_hops fields are accepted; one more is a mail loop, refused 554 5.4.6 with the
    transaction (the session goes on)."""
    for n, accepted in [(5, True), (6, False)]:
        s = session_in(S.S_RCPT)
        body = traced_message(n - 2, 2)
        if verb == b"DATA":
            run(s, b"DATA")
        else:
            s.line(b"BDAT %d LAST" % len(body))
        act = s.data_end(body)
        if accepted:
            assert act is not None and act[0] == S.A_COMMIT, n
            continue
        assert act is None and s.out[-1] == R.R_554_TOO_MANY_HOPS and s.state == S.S_READY, n
        assert s.txn is None and s.cfg.rejections == ["too_many_hops"]  # type: ignore[attr-defined]


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


def authenticated_rcpt() -> S.Session:
    """A submission session after AUTH, MAIL and RCPT."""
    s = S.Session(FakeSettings(submission=True), "192.0.2.1", tls="TLSv1.3 TLS_AES_128_GCM_SHA256")
    run(s, b"EHLO c.test")
    run(s, b"AUTH PLAIN " + base64.b64encode(b"\0u\0p"))
    s.auth_done(True, "u")
    for line in (b"MAIL FROM:<a@x.test>", b"RCPT TO:<x@anywhere.test>", b"DATA"):
        run(s, line)
    return s


@pytest.mark.parametrize(
    ("message", "added"),
    [
        (b"Subject: x\r\n\r\nbody\r\n", [b"Date", b"Message-ID"]),
        (b"Subject: x\r\nDATE: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nbody\r\n", [b"Message-ID"]),
        (b"message-id : <a@b.test>\r\n\r\nbody\r\n", [b"Date"]),
        (b"Date: d\r\nMessage-Id: <a@b.test>\r\n\r\nDate: body\r\n", []),
        (b"Subject: x\r\n\r\nDate: in the body\r\nMessage-ID: <b@x.test>\r\n", [b"Date", b"Message-ID"]),
        (b"X-A: a\r\n Date: folded, not a field\r\n\r\n", [b"Date", b"Message-ID"]),
        (b"\r\nDate: body only\r\n", [b"Date", b"Message-ID"]),
        (b"", [b"Date", b"Message-ID"]),
    ],
)  # fmt: skip
def test_submission_adds_a_missing_date_and_message_id(message: bytes, added: list[bytes]) -> None:
    s = authenticated_rcpt()
    _, msg_id, _, head, body = s.data_end(message)  # type: ignore[misc]
    assert body is message  # the body is passed on untouched, never copied
    fields = [line for line in head.split(b"\r\n") if line and not line.startswith(b"\t")]
    assert fields[0].startswith(b"Received: ")
    names = [line.split(b":", 1)[0] for line in fields[1:]]
    assert names == added
    if b"Message-ID" in added:
        assert f"Message-ID: <{msg_id}@mx.test>\r\n".encode() in head


@pytest.mark.parametrize("colon_at", [MAX_HEAD - 1, MAX_HEAD])
def test_the_header_scan_stops_at_max_head(colon_at: int) -> None:
    """A field is seen only when it ends inside the first MAX_HEAD octets of a header block."""
    first = b"Message-ID: <i@d>\r\n"
    filler = b"X-Fill: " + b"a" * (colon_at - len(b"X-Fill: \r\nDate") - len(first)) + b"\r\n"
    message = first + filler + b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nbody\r\n"
    assert message.index(b"Date:") + 4 == colon_at
    added = missing_fields(message, "ID", "mx.test")
    assert added.startswith(b"Date: ") == (colon_at >= MAX_HEAD)
    assert b"Message-ID" not in added


def test_relay_mail_gets_no_date_or_message_id() -> None:
    s = session_in(S.S_RCPT)
    run(s, b"DATA")
    _, _, _, head, _ = s.data_end(b"Subject: x\r\n\r\nbody\r\n")  # type: ignore[misc]
    assert b"Date:" not in head and b"Message-ID:" not in head


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


def test_requiretls_offered_and_accepted_only_over_tls() -> None:
    """RFC 8689 §4.1: REQUIRETLS is in EHLO once TLS is up, and MAIL may ask for it only then."""
    plain = session_in(S.S_INIT)
    out, _ = run(plain, b"EHLO c.test")
    assert b"REQUIRETLS" not in out
    out, _ = run(plain, b"MAIL FROM:<a@x.test> REQUIRETLS")
    assert out == R.R_530_REQUIRETLS_NEEDS_TLS and plain.state == S.S_READY
    assert plain.cfg.rejections[-1] == "tls"
    tls = S.Session(FakeSettings(), "192.0.2.1", tls="TLSv1.3 X")
    out, _ = run(tls, b"EHLO c.test")
    assert b"250-REQUIRETLS\r\n" in out or b"250 REQUIRETLS\r\n" in out
    out, _ = run(tls, b"MAIL FROM:<a@x.test> REQUIRETLS")
    assert out == R.R_250_SENDER_OK and tls.txn is not None and tls.txn.params == {"REQUIRETLS": ""}
    run(tls, b"RSET")
    out, _ = run(tls, b"MAIL FROM:<a@x.test> REQUIRETLS=yes")
    assert out == R.R_555_BAD_PARAM


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
