# cython: language_level=3, auto_pickle=False, autotestdict=False
# SPDX-License-Identifier: MIT
"""The protocol core, compiled: the twin of `_core_py.py`, with byte-identical replies.

The loop over one read's events, the dispatch of each event to the session and
the action handling run in C: one Python-level call per read instead of a few
per event. The session (its table, its handlers) stays the one Python state
machine both twins drive; rare paths (AUTH, STARTTLS, policy, errors) are its
Python code, called from here. `_core_py.py` documents the contract.

One shortcut: a plain command line (a known four-letter verb, alone or before a
space, within the length limit, outside AUTH) goes straight to the handler the
session's table names, as `Session.line` would send it, without that method's
slicing and lookups; any other line goes through `Session.line` itself.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE

from fastmta.parser import events as _ev
from fastmta.smtp import replies as R
from fastmta.smtp import session as S

cdef int _LINE = _ev.LINE
cdef int _DATA_END = _ev.DATA_END
cdef int _BDAT_CHUNK = _ev.BDAT_CHUNK
cdef int _LINE_TOO_LONG = _ev.LINE_TOO_LONG
cdef int _DATA_TOO_BIG = _ev.DATA_TOO_BIG
cdef int _A_DATA = S.A_DATA
cdef int _A_BDAT = S.A_BDAT
cdef int _A_RESET_BODY = S.A_RESET_BODY
cdef int _A_COMMIT = S.A_COMMIT
cdef int _A_AUTH = S.A_AUTH
cdef int _A_STARTTLS = S.A_STARTTLS
cdef int _A_CLOSE = S.A_CLOSE
cdef tuple _CLOSE = (S.A_CLOSE,)
cdef bytes _R_421_SHUTDOWN = R.R_421_SHUTDOWN
cdef bytes _EMPTY = b""
cdef int _S_AUTH = S.S_AUTH
cdef list _HANDLERS = S._HANDLERS  # state → {verb: handler}, the session's own table
cdef object _SESSION = S.Session  # a subclass may override line(): no shortcut for it
# The four-letter verbs, by their octets upper-cased and read as one little-endian word.
cdef dict _VERBS = {int.from_bytes(v, "little"): v for v in S.KNOWN_VERBS if len(v) == 4}


cdef class Core:
    """One connection's parser and session, driven one read at a time."""

    # the Python session (smtp/session.py): state, table, handlers, the replies in .out
    cdef public object session
    # the command parser (either twin)
    cdef public object parser
    # takes one bytes object: every reply of one read
    cdef public object write
    # an action is being carried out; events and bytes are held
    cdef public bint waiting
    # the last feed began a command line that has no CRLF yet
    cdef public bint line_started
    # events parsed but not yet handled
    cdef list _held
    # bytes that arrived during a wait, not yet parsed
    cdef bytearray _early

    def __init__(self, session, parser, write):
        self.session = session
        self.parser = parser
        self.write = write
        self.waiting = False
        self.line_started = False
        self._held = []
        self._early = bytearray()

    def feed(self, data):
        """Handle one read; returns the action the shell must carry out, or None."""
        parser = self.parser
        cdef bint fresh = not parser.partial
        act = self._run(parser.feed(data))
        # A command line is timed from its first octet (slowloris): did this read begin one?
        self.line_started = parser.partial and (fresh or _has_crlf(data))
        return act

    def hold(self, data):
        """Keep bytes read during a wait; returns how many are kept, for the shell's bound."""
        self._early += data
        return len(self._early)

    def drop_early(self):
        """Take the bytes kept during a wait (STARTTLS: they are plaintext, never commands)."""
        data = bytes(self._early)
        del self._early[:]
        return data

    def resume(self):
        """The wait is over: handle the held events, then the bytes kept meanwhile."""
        cdef list held = self._held
        cdef bytes data
        self.waiting = False
        self._held = []
        act = self._run(held)
        while len(self._early) and act is None:
            data = bytes(self._early)
            del self._early[:]
            act = self._run(self.parser.feed(data))
        return act

    cpdef flush(self):
        """Write the replies gathered so far, in one write."""
        cdef list out = self.session.out
        cdef Py_ssize_t n = len(out)
        if n:
            self.write(out[0] if n == 1 else _EMPTY.join(out))
            del out[:]

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef object _run(self, list events):
        """Handle events in order; stop (holding the rest) at anything that must wait."""
        session = self.session
        parser = self.parser
        cdef Py_ssize_t i = 0
        cdef Py_ssize_t n = len(events)
        cdef bint kick = False  # "BDAT 0": the parser has an empty chunk to report without new bytes
        cdef tuple ev
        cdef int kind, a
        while True:
            while i < n:
                ev = <tuple>events[i]
                i += 1
                kind = ev[0]
                if kind == _LINE:
                    act = _line(session, ev[1])
                elif kind == _DATA_END:
                    act = session.data_end(ev[1])
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
                if a == _A_DATA:
                    parser.start_data()
                elif a == _A_BDAT:
                    parser.start_bdat(act[1], act[2])
                    kick = act[1] == 0
                elif a == _A_RESET_BODY:
                    parser.reset_body()
                elif a == _A_COMMIT or a == _A_AUTH:
                    self._held = events[i:] if i < n else []
                    self.waiting = True
                    self.flush()  # replies before the DATA end go out now, the 250 after the fsync
                    return act
                elif a == _A_STARTTLS:
                    parser.discard()  # no plaintext command survives into TLS (RFC 3207 §5)
                    self._held = []
                    self.waiting = True
                    self.flush()
                    return act
                elif a == _A_CLOSE:
                    self.flush()
                    return act
            if kick or parser.pending:  # stopped at a DATA/BDAT/STARTTLS barrier with bytes left
                kick = False
                events = parser.feed(_EMPTY)
                i = 0
                n = len(events)
                continue
            break
        if session.draining and not session.in_transaction:
            session.out.append(_R_421_SHUTDOWN)
            self.flush()
            return _CLOSE
        self.flush()
        return None


@cython.boundscheck(False)
@cython.wraparound(False)
cdef object _line(object session, object line):
    """``session.line(line)``, taking the plain-command shortcut where it applies."""
    cdef Py_ssize_t n
    cdef const unsigned char* p
    cdef unsigned int word = 0
    cdef unsigned char c
    cdef int i, state
    if type(line) is not bytes or type(session) is not _SESSION:
        return session.line(line)
    n = PyBytes_GET_SIZE(line)
    p = <const unsigned char*>PyBytes_AS_STRING(line)
    if n < 4 or (n > 4 and p[4] != 32):
        return session.line(line)
    for i in range(4):
        c = p[i]
        if 97 <= c <= 122:  # ASCII a-z, as bytes.upper()
            c -= 32
        word |= (<unsigned int>c) << (8 * i)
    verb = _VERBS.get(word)
    if verb is None:
        return session.line(line)
    state = session.state
    if state == _S_AUTH or n > session._max_text:
        return session.line(line)
    handler = (<dict>_HANDLERS[state]).get(verb)
    if handler is None:
        return session.line(line)
    return handler(session, _EMPTY if n <= 5 else PyBytes_FromStringAndSize(<const char*>p + 5, n - 5))


cdef inline bint _has_crlf(object data):
    """Is there a CRLF in a read (bytes, or any buffer)?"""
    if type(data) is not bytes:
        return b"\r\n" in data
    return PyBytes_GET_SIZE(data) > 1 and (<bytes>data).find(b"\r\n") >= 0
