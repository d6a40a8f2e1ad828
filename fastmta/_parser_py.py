# SPDX-License-Identifier: MIT
"""Pure-Python twin of the SMTP parser: the reference for `_parser.pyx` and the fallback.

Sans-I/O: bytes in, lists of `(kind, payload)` events out; no transport, loop,
config or logging. Every scan is a C-level bytes method (find, count, replace,
split); there is no per-byte Python loop. Behaviour must stay identical to the
Cython twin, byte for byte: tests/unit/test_parser_props.py checks it.

Conventions (shared with the Cython twin, see docs/interfaces.md §Parser):
* command lines end at CRLF only; `max_line` counts the CRLF (RFC 5321 §4.5.3.1.4);
* DATA ends only at CRLF "." CRLF; a line start is the DATA start or the octet
  after a real CRLF, and only there is a leading dot removed (RFC 5321 §4.5.2);
* a bare CR or bare LF never starts a line: with "normalise" it is replaced by
  CRLF in place, with "reject" the body is dropped and DATA_BARE_LF reported at
  the real terminator. DATA_BARE_LF wins over DATA_TOO_BIG;
* `max_body_line` counts octets between real CRLFs after unstuffing (RFC 5322
  §2.1.1, CRLF excluded); over-long lines are counted in `long_lines`, never fatal.
"""

from __future__ import annotations

from itertools import islice

from fastmta._events import (
    BARE_LF_NORMALISE,
    BDAT_CHUNK,
    DATA_BARE_LF,
    DATA_END,
    DATA_TOO_BIG,
    DEFAULT_MAX_BODY_LINE,
    DEFAULT_MAX_LINE,
    DEFAULT_MAX_SIZE,
    LINE,
    LINE_TOO_LONG,
    MAX_REPLY_LINE,
    MAX_REPLY_LINES,
    ParserError,
    check_limits,
)

_CMD, _DATA, _BDAT = 0, 1, 2
_TERM = b"\r\n.\r\n"
_BARRIERS = (b"DATA", b"BDAT", b"STARTTLS")


def _is_barrier(line: bytes) -> bool:
    # Generous on purpose: a spurious pause costs nothing, a missed one lets
    # pipelined body bytes be read as commands.
    # Leading ASCII whitespace is skipped as bytes.split() does, so a session that
    # finds its verb with split() can never see DATA where the parser saw none.
    head = (line.lstrip() if line[:1].isspace() else line)[:8].upper()
    return head.startswith(_BARRIERS)


def _normalise(data: bytes) -> bytes:
    """Every bare CR and bare LF becomes CRLF; existing CRLFs stay."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def _count_long(data: bytes, limit: int) -> int:
    lines = data.split(b"\r\n")
    if max(map(len, lines)) <= limit:
        return 0
    return sum(1 for line in lines if len(line) > limit)


class CommandParser:
    """Server side: command lines, the DATA/BDAT/STARTTLS barrier, DATA and BDAT bodies."""

    __slots__ = (
        "_max_line",
        "_max_size",
        "_normalise",
        "_max_body_line",
        "_mode",
        "_buf",
        "_buf_pos",
        "_stopped",
        "_skipping",
        "_carry",
        "_virtual",
        "_chunks",
        "_size",
        "_too_big",
        "_bare",
        "_line_len",
        "_bdat_left",
        "_bdat_last",
        "long_lines",
    )

    def __init__(
        self,
        max_line: int = DEFAULT_MAX_LINE,
        max_size: int = DEFAULT_MAX_SIZE,
        bare_lf: str = "reject",
        max_body_line: int = DEFAULT_MAX_BODY_LINE,
    ) -> None:
        check_limits(max_line, max_size, bare_lf, max_body_line)
        self._max_line = max_line
        self._max_size = max_size
        self._normalise = bare_lf == BARE_LF_NORMALISE
        self._max_body_line = max_body_line
        self._mode = _CMD
        self._buf = b""  # unparsed command-mode octets from _buf_pos on (partial line, or after a barrier)
        self._buf_pos = 0  # after a barrier the whole read is kept, not a copy of its rest
        self._stopped = False
        self._skipping = False
        self._bdat_left = 0
        self._bdat_last = False
        self._reset_body()

    def _reset_body(self) -> None:
        self._carry = b""
        self._virtual = False
        self._chunks: list[bytes] = []  # the body's pieces (DATA runs or BDAT reads), joined once at the end
        self._size = 0
        self._too_big = False
        self._bare = False
        self._line_len = 0
        self.long_lines = 0

    @property
    def pending(self) -> bool:
        """True when feed() stopped at a barrier with unparsed bytes still buffered."""
        return self._stopped and len(self._buf) > self._buf_pos

    @property
    def partial(self) -> bool:
        """True while a command line has begun and its CRLF has not come (buffered or skipped)."""
        return self._mode == _CMD and not self._stopped and (self._skipping or len(self._buf) > self._buf_pos)

    @property
    def body_size(self) -> int:
        """Octets of the current body so far (DATA stops counting past max_size; BDAT counts every chunk)."""
        return self._size

    def start_data(self) -> None:
        """Switch to DATA mode (after the 354 reply); the next octet is a line start."""
        self._reset_body()
        self._mode = _DATA
        # A virtual CRLF before the body makes "." CRLF at the very start a terminator.
        self._carry = b"\r\n"
        self._virtual = True

    def start_bdat(self, size: int, last: bool) -> None:
        """Take exactly `size` octets as one BDAT chunk (RFC 3030), no unstuffing."""
        if size < 0:
            raise ValueError(f"BDAT size must be >= 0, got {size}")
        self._mode = _BDAT
        self._bdat_left = size
        self._bdat_last = bool(last)

    def reset_body(self) -> None:
        """Drop a BDAT body accumulated over earlier chunks (RSET)."""
        self._reset_body()

    def discard(self) -> None:
        """Drop every buffered octet (STARTTLS: no plaintext command injection)."""
        self._buf = b""
        self._buf_pos = 0
        self._stopped = False
        self._skipping = False
        self._mode = _CMD
        self._reset_body()

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[int, object]]:
        """Parse `data` (with anything buffered) and return the events, in order."""
        buf, pos = self._buf, self._buf_pos
        if len(buf) > pos:
            # Resume where the last feed stopped: after a barrier a session feeds b"",
            # so the octets after it (a BDAT chunk, often) are parsed in place.
            if data:
                buf = (buf[pos:] if pos else buf) + data
                pos = 0
            self._buf = b""
            self._buf_pos = 0
        else:
            buf = data if type(data) is bytes else bytes(data)
            pos = 0
        self._stopped = False
        events: list[tuple[int, object]] = []
        while True:
            mode = self._mode
            if mode == _CMD:
                self._commands(buf, pos, events)
                return events
            pos = self._data(buf, pos, events) if mode == _DATA else self._bdat(buf, pos, events)
            if self._mode != _CMD:
                return events

    # -- command mode ---------------------------------------------------------

    def _commands(self, buf: bytes, pos: int, events: list[tuple[int, object]]) -> None:
        n = len(buf)
        max_line = self._max_line
        find = buf.find
        while pos < n:
            end = find(b"\r\n", pos)
            if self._skipping:
                if end < 0:
                    # Keep a trailing CR: it may be the first half of the CRLF.
                    if buf[n - 1] == 13:
                        self._buf = b"\r"
                    return
                # Reported when the limit was crossed; its rest is never a command.
                self._skipping = False
                pos = end + 2
                continue
            if end < 0:
                if n - pos >= max_line:
                    # Already over the limit whatever follows: report it now (a client
                    # that never sends the CRLF still hears 500), drop, never buffer.
                    events.append((LINE_TOO_LONG, None))
                    self._skipping = True
                    if buf[n - 1] == 13:
                        self._buf = b"\r"
                else:
                    self._buf = buf[pos:]
                return
            if end + 2 - pos > max_line:
                events.append((LINE_TOO_LONG, None))
                pos = end + 2
                continue
            line = buf[pos:end]
            pos = end + 2
            events.append((LINE, line))
            if _is_barrier(line):
                self._stopped = True
                if pos < n:
                    self._buf = buf
                    self._buf_pos = pos
                return

    # -- DATA mode ------------------------------------------------------------

    def _data(self, buf: bytes, pos: int, events: list[tuple[int, object]]) -> int:
        carry = self._carry
        if carry:
            s = carry + buf[pos:]
            start = 0
        else:
            s = buf
            start = pos
        idx = s.find(_TERM, start)
        if idx >= 0:
            self._segment(s[start : idx + 2])
            self._carry = b""
            self._finish(events)
            self._mode = _CMD
            return pos + idx + 5 - len(carry) if carry else idx + 5
        end = len(s)
        # Hold back a tail that may begin the terminator (at most 4 octets).
        if s.endswith(b"\r\n.\r", start):
            end -= 4
        elif s.endswith(b"\r\n.", start):
            end -= 3
        elif s.endswith(b"\r\n", start):
            end -= 2
        elif s.endswith(b"\r", start):
            end -= 1
        self._carry = s[end:]
        if end > start:
            self._segment(s[start:end])
        return len(buf)

    def _segment(self, raw: bytes) -> None:
        """Account one run of DATA octets that never splits a CRLF or a line-start dot."""
        if self._bare and not self._normalise:
            return  # rejected already: only the terminator matters now
        # No bare CR/LF iff splitlines() (which breaks at CRLF, CR and LF) sees as
        # many breaks as there are LFs and as there are CRs. Three C-speed passes.
        lines = raw.splitlines()
        breaks = len(lines) if raw[-1] in (10, 13) else len(lines) - 1
        bare = not (raw.count(b"\n") == breaks == raw.count(b"\r"))
        if bare and not self._normalise:
            self._bare = True
            self._chunks = []
            return
        if self._too_big:
            return  # keep looking for bare CR/LF only: that verdict wins
        if bare:
            lines = raw.split(b"\r\n")
        elif raw[-1] == 10:
            lines.append(b"")
        self._lines(lines)
        # RFC 5321 §4.5.2: drop the first dot of every line that starts with one.
        data = b"\r\n".join(raw.split(b"\r\n."))
        if bare:
            data = _normalise(data)
        if self._virtual:
            data = data[2:]
            self._virtual = False
        self._size += len(data)
        if self._size > self._max_size:
            # Stop storing but keep scanning: the reply waits for the real end.
            self._too_big = True
            self._chunks = []
        else:
            self._chunks.append(data)

    def _lines(self, parts: list[bytes]) -> None:
        """Count long lines; parts are `raw` split at CRLF, so parts[0] continues
        the current line and every later part starts a line (maybe with a stuffed dot)."""
        limit = self._max_body_line
        last = parts[-1]
        if len(parts) == 1:
            self._line_len += len(last)
            return
        count = int(self._line_len + len(parts[0]) > limit)
        # Raw lengths bound the unstuffed ones, so the exact count is rarely needed.
        if max(map(len, parts)) > limit:
            middle = islice(parts, 1, len(parts) - 1)
            count += sum(1 for line in middle if len(line) - (line[:1] == b".") > limit)
        self.long_lines += count
        self._line_len = len(last) - (last[:1] == b".")

    def _finish(self, events: list[tuple[int, object]]) -> bytes | None:
        """End the body: its DATA_END (the body is returned) or its refusal (None)."""
        body = None
        if self._bare and not self._normalise:
            events.append((DATA_BARE_LF, None))
            self.long_lines = 0
        elif self._too_big:
            events.append((DATA_TOO_BIG, None))
            self.long_lines = 0
        else:
            chunks = self._chunks
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            events.append((DATA_END, body))
        long_lines = self.long_lines
        self._reset_body()
        self.long_lines = long_lines
        return body

    # -- BDAT mode ------------------------------------------------------------

    def _bdat(self, buf: bytes, pos: int, events: list[tuple[int, object]]) -> int:
        """Take chunk octets from buf[pos:] into the body; return the new pos.

        No unstuffing and no line rules (RFC 3030 §2): each read's share joins
        the pieces DATA uses, so the body is joined once, at LAST. Past max_size
        nothing more is kept, but the chunks are still read to their ends and
        DATA_TOO_BIG comes at LAST.
        """
        take = min(self._bdat_left, len(buf) - pos)
        if take:
            self._bdat_left -= take
            self._size += take
            if self._size > self._max_size:
                self._too_big = True
                self._chunks = []
            else:
                self._chunks.append(buf[pos : pos + take])  # the read itself when it is all chunk
            pos += take
        if self._bdat_left:
            return pos
        self._mode = _CMD
        events.append((BDAT_CHUNK, None))
        if self._bdat_last:
            body = self._finish(events)
            if body is not None:  # DATA_END: count the long lines of the whole body once
                self.long_lines = _count_long(body, self._max_body_line) if body else 0
        return pos


class ReplyParser:
    """Client side: complete (possibly multi-line) replies as `(code, [text lines])`.

    Lines end at LF with an optional CR before it (lenient with odd servers).
    Anything else malformed raises ParserError, and the parser stays broken.
    """

    __slots__ = ("_buf", "_held", "_held_len", "_code", "_lines", "_error")

    def __init__(self) -> None:
        self._buf = b""
        self._held: list[bytes] = []  # pieces of a line still without its LF
        self._held_len = 0
        self._code = -1
        self._lines: list[bytes] = []
        self._error: ParserError | None = None

    def _fail(self, why: str) -> ParserError:
        self._error = ParserError(why)
        return self._error

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[int, list[bytes]]]:
        if self._error is not None:
            raise self._error
        data = data if type(data) is bytes else bytes(data)
        if b"\n" not in data:
            # Hold pieces until the LF arrives, so a line sent one octet at a
            # time costs linear, not quadratic, time.
            self._held.append(data)
            self._held_len += len(data)
            if len(self._buf) + self._held_len > MAX_REPLY_LINE:
                raise self._fail("reply line too long")
            return []
        if self._held:
            data = b"".join(self._held) + data
            self._held = []
            self._held_len = 0
        buf = self._buf + data if self._buf else data
        replies: list[tuple[int, list[bytes]]] = []
        pos = 0
        n = len(buf)
        while pos < n:
            end = buf.find(b"\n", pos)
            if end < 0:
                if n - pos > MAX_REPLY_LINE:
                    raise self._fail("reply line too long")
                break
            stop = end - 1 if end > pos and buf[end - 1] == 13 else end
            line = buf[pos:stop]
            pos = end + 1
            if len(line) > MAX_REPLY_LINE:
                raise self._fail("reply line too long")
            if len(line) < 3 or not (49 <= line[0] <= 53 and 48 <= line[1] <= 57 and 48 <= line[2] <= 57):
                raise self._fail(f"malformed reply line {line[:40]!r}")
            sep = line[3:4]
            if sep not in (b"", b" ", b"-"):
                raise self._fail(f"malformed reply line {line[:40]!r}")
            code = (line[0] - 48) * 100 + (line[1] - 48) * 10 + (line[2] - 48)
            if self._lines and code != self._code:
                raise self._fail(f"reply code changed inside a multi-line reply: {line[:40]!r}")
            self._code = code
            self._lines.append(line[4:])
            if sep == b"-":
                if len(self._lines) >= MAX_REPLY_LINES:
                    raise self._fail("too many lines in one reply")
                continue
            replies.append((code, self._lines))
            self._lines = []
        self._buf = buf[pos:]
        return replies


def encode_data(body: bytes | bytearray | memoryview) -> bytes:
    """Body → DATA wire form: CRLF-normalised, dot-stuffed, ending in CRLF "." CRLF."""
    data = body if type(body) is bytes else bytes(body)
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        data = _normalise(data)
    data = data.replace(b"\r\n.", b"\r\n..")
    if data[:1] == b".":
        data = b"." + data
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"
