"""The call id on every log line written on behalf of a call (structured logs).

``bind_call_id`` sets it in the current context; tasks created afterwards (a call's task and
every task it starts) inherit it.  The entry point installs :class:`CallIdFilter` on its log
handler, which copies it onto each record as ``call_id`` (unless the line names one itself).
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

_CALL_ID: ContextVar[str | None] = ContextVar("omnirtc_call_id", default=None)


def bind_call_id(call_id: str | None) -> None:
    _CALL_ID.set(call_id)


def current_call_id() -> str | None:
    return _CALL_ID.get()


class CallIdFilter(logging.Filter):
    """Adds ``call_id`` to records written inside a call's context (and ``call_tag``,
    `` [call_id]`` or empty, for text formats)."""

    def filter(self, record: logging.LogRecord) -> bool:
        call_id = getattr(record, "call_id", None) or _CALL_ID.get()
        if call_id is not None:
            record.call_id = call_id
        record.call_tag = f" [{call_id}]" if call_id else ""
        return True
