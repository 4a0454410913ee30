"""The cap on open HTTP connections (``server.max_connections``), and whom to drop at it.

Connections that have sent a complete request (their handler is running) are worth keeping;
connections still waiting for request headers, idle keep-alive ones included, cost the
server nothing to drop and are what a slow-header attack is made of.  So at the cap a new
connection is let in by closing the connection that has been waiting for its headers the
longest, and only when every open connection is inside a request is the new one refused.
A client that sends its request as soon as it connects (every real one) is never the
longest-waiting one for long.

Pure bookkeeping, no I/O: :mod:`signaling.http_server` closes what this decides.
"""

from __future__ import annotations

import enum
import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

C = TypeVar("C", bound=Hashable)

SUMMARY_INTERVAL_S = 10.0
"""At most one log line per this many seconds while the cap is being hit."""


class Admission(enum.Enum):
    ADMITTED = "admitted"
    ADMITTED_BY_EVICTION = "admitted_by_eviction"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Decision(Generic[C]):
    admission: Admission
    evicted: C | None = None
    """The connection to close to make room (with ADMITTED_BY_EVICTION)."""


class ConnectionGuard(Generic[C]):
    """Tracks open connections: which wait for request headers (oldest first), which are
    inside a request.  Both structures hold at most ``max_connections`` entries."""

    def __init__(self, max_connections: int, clock: Callable[[], float]) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self.max_connections = max_connections
        self._clock = clock
        self._open: set[C] = set()
        self._waiting: OrderedDict[C, None] = OrderedDict()
        self.evicted = 0
        self.refused = 0
        self._reported = (0, 0)
        self._last_report = -SUMMARY_INTERVAL_S

    @property
    def open(self) -> int:
        return len(self._open)

    @property
    def waiting(self) -> int:
        """Open connections without a complete request (headers not all in yet, or idle)."""
        return len(self._waiting)

    def opened(self, conn: C) -> Decision[C]:
        """A new connection: admit it, admit it in place of another, or refuse it."""
        decision: Decision[C] = Decision(Admission.ADMITTED)
        if len(self._open) >= self.max_connections:
            if not self._waiting:
                self.refused += 1
                self._report()
                return Decision(Admission.REFUSED)
            victim, _ = self._waiting.popitem(last=False)
            self._open.discard(victim)
            self.evicted += 1
            decision = Decision(Admission.ADMITTED_BY_EVICTION, victim)
            self._report()
        self._open.add(conn)
        self._waiting[conn] = None
        return decision

    def request_started(self, conn: C) -> None:
        """``conn`` delivered complete request headers; its handler runs."""
        self._waiting.pop(conn, None)

    def request_finished(self, conn: C) -> None:
        """``conn`` answered its request and now waits for the next one (keep-alive)."""
        if conn in self._open:
            self._waiting[conn] = None
            self._waiting.move_to_end(conn)

    def closed(self, conn: C) -> None:
        self._open.discard(conn)
        self._waiting.pop(conn, None)
        if (self.evicted, self.refused) != self._reported:
            self._report()  # what happened since the last report, once the interval is over

    def _report(self) -> None:
        now = self._clock()
        if now - self._last_report < SUMMARY_INTERVAL_S:
            return
        evicted = self.evicted - self._reported[0]
        refused = self.refused - self._reported[1]
        self._last_report = now
        self._reported = (self.evicted, self.refused)
        log.warning(
            "at max_connections (%d): closed %d connection(s) that had sent no complete "
            "request, refused %d new one(s) (counts since the last report)",
            self.max_connections,
            evicted,
            refused,
            extra={"evicted": evicted, "refused": refused, "open": len(self._open)},
        )
