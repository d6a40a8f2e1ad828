# SPDX-License-Identifier: MIT
"""Parser events to session calls: the one mapping shared by the listener's
protocol and ``sendmail -bs``, so both speak exactly the same SMTP.

On the receive hot path: a chain of int comparisons, the common events first.
"""

from __future__ import annotations

from fastmta.parser import events as ev
from fastmta.smtp.session import Action, Session

# Module globals: one dict lookup each instead of an attribute lookup per event.
_LINE, _DATA_END, _BDAT_CHUNK = ev.LINE, ev.DATA_END, ev.BDAT_CHUNK
_LINE_TOO_LONG, _DATA_TOO_BIG = ev.LINE_TOO_LONG, ev.DATA_TOO_BIG


def dispatch(session: Session, kind: int, payload: object) -> Action | None:
    """Hand one parser event to the session; its action (or None) comes back."""
    if kind == _LINE:
        return session.line(payload)  # type: ignore[arg-type]
    if kind == _DATA_END:
        return session.data_end(payload)  # type: ignore[arg-type]
    if kind == _BDAT_CHUNK:
        return session.bdat_chunk()
    if kind == _LINE_TOO_LONG:
        return session.line_too_long()
    if kind == _DATA_TOO_BIG:
        return session.data_too_big()
    return session.data_bare_lf()
