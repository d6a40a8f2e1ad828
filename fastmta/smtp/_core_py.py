# SPDX-License-Identifier: MIT
"""The protocol core, pure Python: one read in → parser → session → replies out.

Sans-I/O: the core sees bytes, the parser, the session and a ``write`` callable
(the transport's, or ``list.append`` in tests); never the loop, the store, TLS
or timers. One ``feed`` per read handles every event in order and hands all
replies of that read to ``write`` at once. Anything that must wait (a spool
commit, an AUTH check, a TLS handshake) or end the connection comes back as the
session's action tuple; the events after it are held, bytes that arrive
meanwhile are kept unparsed (``hold``), and ``resume`` goes on once the shell
(``protocol.py``) has finished the wait. This file is the reference and the
fallback; ``_core.pyx`` is its compiled twin and must answer byte for byte alike
(tests/unit/test_core_twins.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastmta.parser import events as ev
from fastmta.smtp import replies as R
from fastmta.smtp.session import A_AUTH, A_BDAT, A_CLOSE, A_COMMIT, A_DATA, A_RESET_BODY, A_STARTTLS

_LINE, _DATA_END, _BDAT_CHUNK = ev.LINE, ev.DATA_END, ev.BDAT_CHUNK
_LINE_TOO_LONG, _DATA_TOO_BIG = ev.LINE_TOO_LONG, ev.DATA_TOO_BIG
_CLOSE = (A_CLOSE,)


class Core:
    """One connection's parser and session, driven one read at a time."""

    __slots__ = ("session", "parser", "write", "waiting", "line_started", "_held", "_early")

    def __init__(self, session: Any, parser: Any, write: Callable[[bytes], object]) -> None:
        self.session = session
        self.parser = parser
        self.write = write  # takes one bytes object: every reply of one read
        self.waiting = False  # an action is being carried out; events and bytes are held
        self.line_started = False  # the last feed began a command line that has no CRLF yet
        self._held: list[tuple[int, object]] = []  # events parsed but not yet handled
        self._early = bytearray()  # bytes that arrived during a wait, not yet parsed

    def feed(self, data: bytes) -> tuple[Any, ...] | None:
        """Handle one read; returns the action the shell must carry out, or None."""
        parser = self.parser
        fresh = not parser.partial
        act = self._run(parser.feed(data))
        # A command line is timed from its first octet (slowloris): did this read begin one?
        self.line_started = parser.partial and (fresh or b"\r\n" in data)
        return act

    def hold(self, data: bytes) -> int:
        """Keep bytes read during a wait (parsing now could read a body as commands);
        returns how many are kept, for the shell's bound."""
        early = self._early
        early += data
        return len(early)

    def drop_early(self) -> bytes:
        """Take the bytes kept during a wait (STARTTLS: they are plaintext, never commands)."""
        data = bytes(self._early)
        self._early.clear()
        return data

    def resume(self) -> tuple[Any, ...] | None:
        """The wait is over: handle the held events, then the bytes kept meanwhile."""
        self.waiting = False
        held, self._held = self._held, []
        act = self._run(held)
        early = self._early
        while early and act is None:
            data = bytes(early)
            early.clear()
            act = self._run(self.parser.feed(data))
        return act

    def flush(self) -> None:
        """Write the replies gathered so far, in one write."""
        out = self.session.out
        if out:
            self.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def _run(self, events: list[tuple[int, object]]) -> tuple[Any, ...] | None:
        """Handle events in order; stop (holding the rest) at anything that must wait."""
        session = self.session
        parser = self.parser
        i = 0
        n = len(events)
        kick = False  # "BDAT 0": the parser has an empty chunk to report without new bytes
        while True:
            while i < n:
                kind, payload = events[i]
                i += 1
                if kind == _LINE:
                    act = session.line(payload)
                elif kind == _DATA_END:
                    act = session.data_end(payload)
                elif kind == _BDAT_CHUNK:
                    act = session.bdat_chunk()
                elif kind == _LINE_TOO_LONG:
                    act = session.line_too_long()
                elif kind == _DATA_TOO_BIG:
                    act = session.data_too_big()
                else:
                    act = session.data_bare_lf()
                if act is None:
                    continue
                a = act[0]
                if a == A_DATA:
                    parser.start_data()
                elif a == A_BDAT:
                    parser.start_bdat(act[1], act[2])
                    kick = act[1] == 0
                elif a == A_RESET_BODY:
                    parser.reset_body()
                elif a in (A_COMMIT, A_AUTH):
                    self._held = events[i:] if i < n else []
                    self.waiting = True
                    self.flush()  # replies before the DATA end go out now, the 250 after the fsync
                    return act
                elif a == A_STARTTLS:
                    parser.discard()  # no plaintext command survives into TLS (RFC 3207 §5)
                    self._held = []
                    self.waiting = True
                    self.flush()
                    return act
                elif a == A_CLOSE:
                    self.flush()
                    return act
            if parser.pending or kick:  # stopped at a DATA/BDAT/STARTTLS barrier with bytes left
                kick = False
                events = parser.feed(b"")
                i = 0
                n = len(events)
                continue
            break
        if session.draining and not session.in_transaction:
            session.out.append(R.R_421_SHUTDOWN)
            self.flush()
            return _CLOSE
        self.flush()
        return None
