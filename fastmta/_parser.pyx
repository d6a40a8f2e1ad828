# cython: language_level=3, auto_pickle=False, autotestdict=False
# SPDX-License-Identifier: MIT
"""Cython SMTP parser: the fast twin of `_parser_py.py`, with byte-identical events.

Sans-I/O: bytes in, lists of `(kind, payload)` events out. DATA is scanned in
one vectorised pass (SSE2, 16 octets a step) for the next CR or LF: each hit is
a CRLF line end or a bare CR/LF, so line ends, bare-CR/LF detection and line
lengths cost one look at every octet. Only lines that start with a dot break
the body into separate memcpy runs, and the body is written straight into one
bytes object (sized from the feed) that becomes the DATA_END payload, so a body
that arrives in one feed is copied exactly once. BDAT chunks are copied into
that same buffer as they are read, so a chunked body is copied once as well.
After a rejected bare CR/LF,
memmem jumps to the terminator. Command lines use memchr. The conventions
(line limits, what a line start is, bare CR/LF) are documented in `_parser_py.py`.
"""

cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from libc.string cimport memchr, memcpy

from fastmta import _events as _ev

cdef extern from "string.h":
    # GNU extension; Python.h defines _GNU_SOURCE before string.h is read.
    void* memmem(const void* haystack, size_t hlen, const void* needle, size_t nlen) nogil
    void* memrchr(const void* s, int c, size_t n) nogil

cdef extern from *:
    """
    /* Offset of the first CR or LF in p[0..n), or n. SSE2 (every x86-64) tests 16
       octets per step for both at once: one pass per line instead of a memchr
       for LF plus a memchr for CR. FASTMTA_NO_SIMD forces the portable
       version (tests/fuzz/asan.sh checks both). */
    #include <string.h>
    #if defined(__SSE2__) && !defined(FASTMTA_NO_SIMD)
    #include <emmintrin.h>
    static inline Py_ssize_t fm_find_crlf(const unsigned char *p, Py_ssize_t n) {
        const __m128i cr = _mm_set1_epi8(13), lf = _mm_set1_epi8(10);
        Py_ssize_t i = 0;
        for (; i + 16 <= n; i += 16) {
            __m128i v = _mm_loadu_si128((const __m128i *)(p + i));
            unsigned m = (unsigned)_mm_movemask_epi8(
                _mm_or_si128(_mm_cmpeq_epi8(v, cr), _mm_cmpeq_epi8(v, lf)));
            if (m) return i + __builtin_ctz(m);
        }
        for (; i < n; i++) if (p[i] == 13 || p[i] == 10) return i;
        return n;
    }
    #else
    static inline Py_ssize_t fm_find_crlf(const unsigned char *p, Py_ssize_t n) {
        const unsigned char *cr = (const unsigned char *)memchr(p, 13, (size_t)n);
        const unsigned char *lf = (const unsigned char *)memchr(p, 10, cr ? (size_t)(cr - p) : (size_t)n);
        return lf ? lf - p : (cr ? cr - p : n);
    }
    #endif
    """
    Py_ssize_t fm_find_crlf(const unsigned char* p, Py_ssize_t n) nogil

cdef extern from "Python.h":
    int _PyBytes_Resize(PyObject **bytes, Py_ssize_t newsize) except -1

cdef enum:
    _CMD = 0
    _DATA = 1
    _BDAT = 2
    _LF = 10
    _CR = 13
    _DOT = 46

cdef object _LINE = _ev.LINE
cdef object _DATA_END = _ev.DATA_END
cdef tuple _EV_TOO_LONG = (_ev.LINE_TOO_LONG, None)
cdef tuple _EV_TOO_BIG = (_ev.DATA_TOO_BIG, None)
cdef tuple _EV_BARE = (_ev.DATA_BARE_LF, None)
cdef tuple _EV_CHUNK = (_ev.BDAT_CHUNK, None)


cdef inline bint _word_at(const unsigned char* p, Py_ssize_t n, const char* word, Py_ssize_t k):
    """Case-insensitive: do the n octets at p start with the k-letter upper-case word?"""
    cdef Py_ssize_t i
    if n < k:
        return False
    for i in range(k):
        if (p[i] | 0x20) != (word[i] | 0x20):
            return False
    return True


cdef bint _is_barrier(const unsigned char* p, Py_ssize_t n):
    # Mirrors _parser_py._is_barrier: a generous match is harmless, a miss is not.
    cdef Py_ssize_t lim = n
    cdef Py_ssize_t q = 0
    while q < lim and (p[q] == 32 or 9 <= p[q] <= 13):  # ASCII whitespace, as bytes.lstrip()
        q += 1
    lim -= q
    p += q
    return _word_at(p, lim, b"DATA", 4) or _word_at(p, lim, b"BDAT", 4) or _word_at(p, lim, b"STARTTLS", 8)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef Py_ssize_t _crlf_after(const unsigned char* p, Py_ssize_t lo, Py_ssize_t hi, bint last):
    """Offset of the LF of the first (or, with `last`, the last) CRLF whose CR is at
    lo or later and whose LF is before hi; -1 if there is none. Bare LFs are skipped."""
    cdef const unsigned char* hit
    cdef Py_ssize_t j = lo + 1
    while j < hi:
        if last:
            hit = <const unsigned char*>memrchr(p + j, _LF, hi - j)
        else:
            hit = <const unsigned char*>memchr(p + j, _LF, hi - j)
        if hit == NULL:
            return -1
        if p[hit - p - 1] == _CR:
            return hit - p
        if last:
            hi = hit - p
        else:
            j = hit - p + 1
    return -1


cdef Py_ssize_t _count_long(const unsigned char* p, Py_ssize_t n, Py_ssize_t limit):
    """Lines (split at CRLF) longer than `limit` octets; the last may lack its CRLF.

    A line from `start` is short exactly when a CRLF ends it with its LF before
    start + limit + 2; then every line ending in that window is short too, so the
    scan jumps to the last CRLF of the window (one memrchr per window, not one
    memchr per line). Each octet is looked at a bounded number of times.
    """
    cdef Py_ssize_t count = 0, start = 0, end, j
    if n <= limit:
        return 0
    while True:
        end = start + limit + 2
        if end >= n:
            j = _crlf_after(p, start, n, True)
            if j < 0:
                return count + (n - start > limit)
            # Lines up to j are short; what follows is the last line, without its CRLF.
            return count + (n - j - 1 > limit)
        j = _crlf_after(p, start, end, True)
        if j < 0:
            count += 1  # no CRLF ends this line in time: it is long; find where it ends
            j = _crlf_after(p, end - 2, n, False)
            if j < 0:
                return count
        start = j + 1


cdef class CommandParser:
    """Server side: command lines, the DATA/BDAT/STARTTLS barrier, DATA and BDAT bodies."""

    cdef Py_ssize_t _max_line        # command line limit, CRLF included (RFC 5321 §4.5.3.1.4)
    cdef Py_ssize_t _max_size        # body limit in octets after unstuffing
    cdef bint _normalise             # bare CR/LF → CRLF instead of rejecting the body
    cdef Py_ssize_t _max_body_line   # body line limit, CRLF excluded (RFC 5322 §2.1.1)
    cdef int _mode                   # _CMD, _DATA or _BDAT
    cdef bytes _buf                  # unparsed command-mode octets from _buf_pos on (partial line, or after a barrier)
    cdef Py_ssize_t _buf_pos         # after a barrier: the whole read is kept, not a copy of its rest
    cdef bint _stopped               # feed() stopped at a barrier
    cdef bint _skipping              # dropping an over-long command line up to its CRLF
    # DATA state
    cdef bint _bol                   # at a line start (DATA start or after a real CRLF)
    cdef unsigned char _carry[4]     # held-back tail: "\r" mid-line, or "." / ".\r" at a line start
    cdef Py_ssize_t _carry_len
    cdef bint _ended                 # _scan() found CRLF "." CRLF
    cdef bint _store                 # still writing the body (not too big, not rejected); BDAT too
    cdef bint _too_big
    cdef bint _bare                  # bare CR/LF seen under "reject": only the terminator matters now
    cdef Py_ssize_t _line_len        # octets of the current body line seen in earlier feeds
    cdef PyObject* _out              # the DATA or BDAT body being built: a bytes object we own (refcount 1)
    cdef Py_ssize_t _out_len
    cdef Py_ssize_t _size            # body octets so far (BDAT: also those dropped past max_size)
    # BDAT state
    cdef Py_ssize_t _bdat_left       # octets of the current chunk still to come
    cdef bint _bdat_last
    cdef public Py_ssize_t long_lines

    def __cinit__(self):
        self._out = NULL

    def __init__(
        self,
        Py_ssize_t max_line=_ev.DEFAULT_MAX_LINE,
        Py_ssize_t max_size=_ev.DEFAULT_MAX_SIZE,
        str bare_lf="reject",
        Py_ssize_t max_body_line=_ev.DEFAULT_MAX_BODY_LINE,
    ):
        _ev.check_limits(max_line, max_size, bare_lf, max_body_line)
        self._max_line = max_line
        self._max_size = max_size
        self._normalise = bare_lf == _ev.BARE_LF_NORMALISE
        self._max_body_line = max_body_line
        self._mode = _CMD
        self._buf = b""
        self._buf_pos = 0
        self._stopped = False
        self._skipping = False
        self._bdat_left = 0
        self._bdat_last = False
        self._reset_body()

    def __dealloc__(self):
        Py_XDECREF(self._out)
        self._out = NULL

    cdef void _drop_out(self):
        Py_XDECREF(self._out)
        self._out = NULL
        self._out_len = 0

    cdef void _reset_body(self):
        self._drop_out()
        self._bol = True
        self._carry_len = 0
        self._ended = False
        self._store = True
        self._too_big = False
        self._bare = False
        self._line_len = 0
        self._size = 0
        self.long_lines = 0

    @property
    def pending(self):
        """True when feed() stopped at a barrier with unparsed bytes still buffered."""
        return self._stopped and PyBytes_GET_SIZE(self._buf) > self._buf_pos

    @property
    def partial(self):
        """True while a command line has begun and its CRLF has not come (buffered or skipped)."""
        return self._mode == _CMD and not self._stopped and (
            self._skipping or PyBytes_GET_SIZE(self._buf) > self._buf_pos
        )

    @property
    def body_size(self):
        """Octets of the current body so far (DATA stops counting past max_size; BDAT counts every chunk)."""
        return self._size

    def start_data(self):
        """Switch to DATA mode (after the 354 reply); the next octet is a line start."""
        self._reset_body()
        self._mode = _DATA

    def start_bdat(self, Py_ssize_t size, last):
        """Take exactly `size` octets as one BDAT chunk (RFC 3030), no unstuffing."""
        if size < 0:
            raise ValueError(f"BDAT size must be >= 0, got {size}")
        self._mode = _BDAT
        self._bdat_left = size
        self._bdat_last = bool(last)

    def reset_body(self):
        """Drop a BDAT body accumulated over earlier chunks (RSET)."""
        self._reset_body()

    def discard(self):
        """Drop every buffered octet (STARTTLS: no plaintext command injection)."""
        self._buf = b""
        self._buf_pos = 0
        self._stopped = False
        self._skipping = False
        self._mode = _CMD
        self._reset_body()

    def feed(self, data):
        """Parse `data` (with anything buffered) and return the events, in order."""
        cdef bytes buf
        cdef list events = []
        cdef Py_ssize_t pos = 0
        if PyBytes_GET_SIZE(self._buf) > self._buf_pos:
            # Resume where the last feed stopped: after a barrier a session feeds b"",
            # so the octets after it (a BDAT chunk, often) are parsed in place.
            buf = self._buf
            pos = self._buf_pos
            if len(data):
                buf = (buf[pos:] if pos else buf) + data
                pos = 0
            self._buf = b""
            self._buf_pos = 0
        elif type(data) is bytes:
            buf = <bytes>data
        else:
            buf = bytes(data)
        self._stopped = False
        while True:
            if self._mode == _CMD:
                self._commands(buf, pos, events)
                return events
            if self._mode == _DATA:
                pos = self._data(buf, pos, events)
            else:
                pos = self._bdat(buf, pos, events)
            if self._mode != _CMD:
                return events

    # -- command mode ---------------------------------------------------------

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int _commands(self, bytes buf, Py_ssize_t pos, list events) except -1:
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(buf)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(buf)
        cdef Py_ssize_t end, j
        cdef const unsigned char* hit
        while pos < n:
            # Find the next CRLF: LF with CR before it (a lone LF is line content).
            j = pos
            end = -1
            while j < n:
                hit = <const unsigned char*>memchr(p + j, _LF, n - j)
                if hit == NULL:
                    break
                j = hit - p
                if j > pos and p[j - 1] == _CR:
                    end = j - 1
                    break
                j += 1
            if self._skipping:
                if end < 0:
                    # Keep a trailing CR: it may be the first half of the CRLF.
                    if p[n - 1] == _CR:
                        self._buf = b"\r"
                    return 0
                # Reported when the limit was crossed; its rest is never a command.
                self._skipping = False
                pos = end + 2
                continue
            if end < 0:
                if n - pos >= self._max_line:
                    # Already over the limit whatever follows: report it now (a client
                    # that never sends the CRLF still hears 500), drop, never buffer.
                    events.append(_EV_TOO_LONG)
                    self._skipping = True
                    if p[n - 1] == _CR:
                        self._buf = b"\r"
                else:
                    self._buf = buf[pos:]
                return 0
            if end + 2 - pos > self._max_line:
                events.append(_EV_TOO_LONG)
                pos = end + 2
                continue
            events.append((_LINE, PyBytes_FromStringAndSize(<const char*>p + pos, end - pos)))
            if _is_barrier(p + pos, end - pos):
                self._stopped = True
                if end + 2 < n:
                    self._buf = buf
                    self._buf_pos = end + 2
                return 0
            pos = end + 2
        return 0

    # -- DATA mode ------------------------------------------------------------

    cdef int _reserve(self, Py_ssize_t extra, Py_ssize_t most) except -1:
        """Make room for `extra` more body octets up front (capped at `most`, the
        largest the body can still become: max_size, or less once BDAT LAST says).

        Sizing the buffer from the feed avoids regrowing it run by run: fresh
        pages from each realloc cost more than the whole scan of a large body.
        """
        cdef Py_ssize_t need = self._out_len + extra
        cdef Py_ssize_t cap
        if not self._store or extra <= 0:
            return 0
        if need > most:
            need = most
        if self._out == NULL:
            if need <= 0:
                return 0
            self._out = _new_bytes(need if need > 256 else 256)
            return 0
        cap = PyBytes_GET_SIZE(<object>self._out)
        if need > cap:
            cap = cap * 2 if cap * 2 > need else need
            if cap > most:
                cap = most
            _PyBytes_Resize(&self._out, cap)
        return 0

    cdef int _emit(self, const unsigned char* src, Py_ssize_t k) except -1:
        """Append k body octets, or stop storing once the body passes max_size."""
        cdef Py_ssize_t need
        if not self._store or k <= 0:
            return 0
        need = self._out_len + k
        if need > self._max_size:
            # Stop storing but keep scanning: the reply waits for the real end.
            self._too_big = True
            self._store = False
            self._drop_out()
            self._size = need
            return 0
        if self._out == NULL or need > PyBytes_GET_SIZE(<object>self._out):
            self._reserve(k if k > 4096 else 4096, self._max_size)
        memcpy(PyBytes_AS_STRING(<object>self._out) + self._out_len, src, k)
        self._out_len = need
        self._size = need
        return 0

    cdef int _bare_seen(self) except -1:
        """A bare CR or LF under "reject": drop the body, look only for the terminator."""
        self._bare = True
        self._store = False
        self._drop_out()
        return 0

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef Py_ssize_t _scan(self, const unsigned char* p, Py_ssize_t n) except -1:
        """Consume DATA octets; return how many (the rest, at most 2, is carried).

        Sets _ended when CRLF "." CRLF was found; the return value is then the
        offset just after it.
        """
        cdef Py_ssize_t i = 0, seg = 0, ls = 0, k, stop = 0
        cdef const unsigned char* hit
        cdef bint normalise = self._normalise
        cdef bint bol = self._bol
        cdef Py_ssize_t line_len = self._line_len
        cdef Py_ssize_t max_body_line = self._max_body_line
        while True:
            if bol:
                if i >= n:
                    stop = n
                    break
                if p[i] == _DOT:
                    # RFC 5321 §4.5.2: "." CRLF ends the data; any other line
                    # starting with a dot loses that dot.
                    if i + 1 >= n:
                        stop = i
                        break
                    if p[i + 1] == _CR:
                        if i + 2 >= n:
                            stop = i
                            break
                        if p[i + 2] == _LF:
                            self._emit(p + seg, i - seg)
                            self._ended = True
                            return i + 3
                    self._emit(p + seg, i - seg)
                    seg = i + 1
                    i += 1
                ls = i
                line_len = 0
                bol = False
            if self._bare:
                # Rejected already: only CRLF "." CRLF matters, so jump to it.
                hit = <const unsigned char*>memmem(p + i, n - i, b"\r\n.\r\n", 5)
                if hit != NULL:
                    self._ended = True
                    return hit - p + 5
                # Not here: walk only the last octets, so that a terminator split
                # across feeds leaves the right carry and state.
                k = n - 4
                if k > i:
                    if p[k] == _LF:
                        k -= 1
                    i = k
            k = i + fm_find_crlf(p + i, n - i)
            if k >= n:
                stop = n
                line_len += n - ls
                break
            if p[k] == _CR:
                if k + 1 >= n:
                    # A final CR may start a CRLF: carry it.
                    stop = k
                    line_len += k - ls
                    break
                if p[k + 1] == _LF:
                    if line_len + (k - ls) > max_body_line:
                        self.long_lines += 1
                    bol = True
                    i = k + 2
                    continue
            # A bare CR or LF (the octet before i is never a CR pairing with an LF
            # at i: a CR ending the previous feed is carried into this buffer). It
            # never starts a line: no unstuffing after it, no terminator.
            if not self._bare:
                if normalise:
                    self._emit(p + seg, k - seg)
                    self._emit(<const unsigned char*>b"\r\n", 2)
                    seg = k + 1
                else:
                    self._bare_seen()
            i = k + 1
        self._bol = bol
        self._line_len = line_len
        self._emit(p + seg, stop - seg)
        return stop

    cdef int _data(self, bytes buf, Py_ssize_t pos, list events) except -1:
        """Run _scan over buf[pos:], first joining any carried tail; return the new pos."""
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(buf)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(buf)
        cdef unsigned char tmp[16]
        cdef Py_ssize_t k, m, used, old
        self._reserve(n - pos + self._carry_len, self._max_size)
        # A carried tail (≤ 2 octets) is resolved on a small joined copy, so the
        # big buffer itself is always scanned in place.
        if self._carry_len and pos < n:
            old = self._carry_len
            k = n - pos if n - pos < 8 else 8
            memcpy(tmp, self._carry, old)
            memcpy(tmp + old, p + pos, k)
            m = old + k
            self._carry_len = 0
            used = self._scan(tmp, m)
            if self._ended:
                self._finish(events)
                return pos + used - old
            if used >= old:
                # The old tail is consumed; what tmp left over is still in buf.
                pos += used - old
            else:
                # Too few new octets to decide (then k == n - pos): carry them all.
                self._carry_len = m - used
                memcpy(self._carry, tmp + used, self._carry_len)
                return n
        if pos >= n:
            return n
        used = self._scan(p + pos, n - pos)
        if self._ended:
            self._finish(events)
            return pos + used
        self._carry_len = n - pos - used
        memcpy(self._carry, p + pos + used, self._carry_len)
        return n

    cdef object _finish(self, list events):
        """End the body: its DATA_END (the body is returned) or its refusal (None)."""
        cdef object body = None
        cdef PyObject* raw
        cdef Py_ssize_t long_lines = self.long_lines
        if self._bare:
            events.append(_EV_BARE)
            long_lines = 0
        elif self._too_big:
            events.append(_EV_TOO_BIG)
            long_lines = 0
        else:
            if self._out == NULL:
                body = b""
            else:
                raw = self._out
                self._out = NULL
                body = _take(raw, self._out_len)
                self._out_len = 0
            events.append((_DATA_END, body))
        self._reset_body()
        self._mode = _CMD
        self.long_lines = long_lines
        return body

    # -- BDAT mode ------------------------------------------------------------

    cdef Py_ssize_t _bdat(self, bytes buf, Py_ssize_t pos, list events) except -1:
        """Copy chunk octets from buf[pos:] into the body; return the new pos.

        No unstuffing and no line rules (RFC 3030 §2): the octets go into the
        buffer DATA uses, so the last chunk's DATA_END payload is that buffer.
        Past max_size nothing more is stored, but the chunks are still read to
        their ends and DATA_TOO_BIG comes at LAST.
        """
        cdef Py_ssize_t take = PyBytes_GET_SIZE(buf) - pos
        cdef Py_ssize_t need, most
        cdef object body
        if take > self._bdat_left:
            take = self._bdat_left
        if take:
            self._bdat_left -= take
            need = self._size + take
            if self._store and need <= self._max_size:
                most = self._max_size
                if self._bdat_last and need + self._bdat_left < most:
                    most = need + self._bdat_left  # the last chunk's end is the body's end
                self._reserve(take, most)
            self._emit(<const unsigned char*>PyBytes_AS_STRING(buf) + pos, take)  # past max_size: stops storing
            self._size = need  # every chunk counts, stored or not
            pos += take
        if self._bdat_left:
            return pos
        self._mode = _CMD
        events.append(_EV_CHUNK)
        if self._bdat_last:
            body = self._finish(events)
            if body is not None:  # DATA_END: count the long lines of the whole body once
                self.long_lines = _count_long(
                    <const unsigned char*>PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body), self._max_body_line
                )
        return pos


cdef class ReplyParser:
    """Client side: complete (possibly multi-line) replies as `(code, [text lines])`.

    Lines end at LF with an optional CR before it (lenient with odd servers).
    Anything else malformed raises ParserError, and the parser stays broken.
    """

    cdef bytes _buf
    cdef list _held                  # pieces of a line still without its LF
    cdef Py_ssize_t _held_len
    cdef int _code
    cdef list _lines
    cdef object _error

    def __init__(self):
        self._buf = b""
        self._held = []
        self._held_len = 0
        self._code = -1
        self._lines = []
        self._error = None

    cdef object _fail(self, str why):
        self._error = _ev.ParserError(why)
        return self._error

    @cython.boundscheck(False)
    @cython.wraparound(False)
    def feed(self, data):
        cdef bytes buf
        cdef list replies = []
        cdef Py_ssize_t pos = 0, n, end, stop
        cdef const unsigned char* p
        cdef const unsigned char* hit
        cdef bytes line
        cdef int code
        cdef unsigned char sep
        if self._error is not None:
            raise self._error
        buf = <bytes>data if type(data) is bytes else bytes(data)
        if memchr(PyBytes_AS_STRING(buf), _LF, PyBytes_GET_SIZE(buf)) == NULL:
            # Hold pieces until the LF arrives, so a line sent one octet at a
            # time costs linear, not quadratic, time.
            self._held.append(buf)
            self._held_len += PyBytes_GET_SIZE(buf)
            if PyBytes_GET_SIZE(self._buf) + self._held_len > _ev.MAX_REPLY_LINE:
                raise self._fail("reply line too long")
            return replies
        if self._held:
            buf = b"".join(self._held) + buf
            self._held = []
            self._held_len = 0
        if PyBytes_GET_SIZE(self._buf):
            buf = self._buf + buf
        p = <const unsigned char*>PyBytes_AS_STRING(buf)
        n = PyBytes_GET_SIZE(buf)
        while pos < n:
            hit = <const unsigned char*>memchr(p + pos, _LF, n - pos)
            if hit == NULL:
                if n - pos > _ev.MAX_REPLY_LINE:
                    raise self._fail("reply line too long")
                break
            end = hit - p
            stop = end - 1 if end > pos and p[end - 1] == _CR else end
            line = PyBytes_FromStringAndSize(<const char*>p + pos, stop - pos)
            pos = end + 1
            if PyBytes_GET_SIZE(line) > _ev.MAX_REPLY_LINE:
                raise self._fail("reply line too long")
            if PyBytes_GET_SIZE(line) < 3 or not (
                49 <= line[0] <= 53 and 48 <= line[1] <= 57 and 48 <= line[2] <= 57
            ):
                raise self._fail(f"malformed reply line {line[:40]!r}")
            sep = line[3] if PyBytes_GET_SIZE(line) > 3 else 32
            if sep != 32 and sep != 45:
                raise self._fail(f"malformed reply line {line[:40]!r}")
            code = (line[0] - 48) * 100 + (line[1] - 48) * 10 + (line[2] - 48)
            if self._lines and code != self._code:
                raise self._fail(f"reply code changed inside a multi-line reply: {line[:40]!r}")
            self._code = code
            self._lines.append(line[4:])
            if sep == 45:
                if len(self._lines) >= _ev.MAX_REPLY_LINES:
                    raise self._fail("too many lines in one reply")
                continue
            replies.append((code, self._lines))
            self._lines = []
        self._buf = buf[pos:]
        return replies


cdef PyObject* _new_bytes(Py_ssize_t size) except NULL:
    """A fresh, uninitialised bytes object as an owned raw pointer (refcount 1),
    so it can be written in place and resized with _PyBytes_Resize."""
    cdef object fresh = PyBytes_FromStringAndSize(NULL, size)
    Py_INCREF(fresh)
    return <PyObject*>fresh


cdef object _take(PyObject* raw, Py_ssize_t size):
    """Cut an owned bytes pointer from _new_bytes down to `size` and hand it over."""
    cdef object out
    _PyBytes_Resize(&raw, size)  # on failure it frees raw and raises MemoryError
    out = <object>raw
    Py_XDECREF(raw)
    return out


cdef inline Py_ssize_t _terminate(unsigned char* o, Py_ssize_t w, bint crlf) noexcept nogil:
    """End a DATA body written up to o[w]: CRLF if its last line lacks one, then "." CRLF.
    Returns the new length."""
    if crlf:
        o[w] = _CR
        o[w + 1] = _LF
        w += 2
    o[w] = _DOT
    o[w + 1] = _CR
    o[w + 2] = _LF
    return w + 3


@cython.boundscheck(False)
@cython.wraparound(False)
cdef object _encode_dirty(const unsigned char* p, Py_ssize_t n):
    """Slow path of encode_data for bodies with bare CR/LF: one C pass, 2n+5 bound."""
    cdef PyObject* raw = _new_bytes(2 * n + 5)
    cdef unsigned char* o = <unsigned char*>PyBytes_AS_STRING(<object>raw)
    cdef Py_ssize_t i = 0, w = 0
    cdef bint bol = True
    cdef unsigned char c
    while i < n:
        c = p[i]
        if bol and c == _DOT:
            o[w] = _DOT
            w += 1
        bol = False
        if c == _CR or c == _LF:
            o[w] = _CR
            o[w + 1] = _LF
            w += 2
            bol = True
            if c == _CR and i + 1 < n and p[i + 1] == _LF:
                i += 1
        else:
            o[w] = c
            w += 1
        i += 1
    return _take(raw, _terminate(o, w, not bol))


@cython.boundscheck(False)
@cython.wraparound(False)
def encode_data(body):
    """Body → DATA wire form: CRLF-normalised, dot-stuffed, ending in CRLF "." CRLF."""
    cdef bytes data = body if type(body) is bytes else bytes(body)
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t i = 0, k, seg = 0, w = 0, d, ndots = 0, cap = 0, tail
    cdef Py_ssize_t* dots = NULL
    cdef Py_ssize_t* grown
    cdef object out
    cdef unsigned char* o
    try:
        # Pass 1: every CR/LF must belong to a CRLF (else the normalising slow
        # path); note where lines start with a dot (RFC 5321 §4.5.2).
        while i < n:
            if p[i] == _DOT:
                if ndots == cap:
                    cap = cap * 2 + 64
                    grown = <Py_ssize_t*>PyMem_Realloc(dots, cap * sizeof(Py_ssize_t))
                    if grown == NULL:
                        raise MemoryError()
                    dots = grown
                dots[ndots] = i
                ndots += 1
            k = i + fm_find_crlf(p + i, n - i)
            if k >= n:
                break
            if p[k] != _CR or k + 1 >= n or p[k + 1] != _LF:
                return _encode_dirty(p, n)
            i = k + 2
        # Pass 2: exact size, one memcpy per run between dot lines.
        tail = 2 if n and p[n - 1] != _LF else 0
        out = PyBytes_FromStringAndSize(NULL, n + ndots + tail + 3)
        o = <unsigned char*>PyBytes_AS_STRING(out)
        for k in range(ndots):
            d = dots[k]
            memcpy(o + w, p + seg, d - seg)
            w += d - seg
            o[w] = _DOT
            w += 1
            seg = d
        memcpy(o + w, p + seg, n - seg)
        _terminate(o, w + n - seg, tail)
        return out
    finally:
        PyMem_Free(dots)
