"""Trickle ICE fragments (RFC 8840 ``application/trickle-ice-sdpfrag``), as WHIP clients send
them in PATCH requests: the client's ICE credentials, then per media section (``m=`` + ``a=mid``)
its new candidates and perhaps ``a=end-of-candidates``.

A fragment whose credentials differ from the offer's asks for an ICE restart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from realtime.errors import CallError

MAX_FRAGMENT_BYTES = 16 * 1024
MAX_TRICKLED = 16
"""Remote candidates taken per PATCH (as for an offer: aioice checks every one)."""

_CANDIDATE = re.compile(r"^a=(candidate:\S+ \d+ \S+ \d+ \S+ \d+ typ \S+.*)$")


class InvalidFragment(CallError):
    """A trickle ICE fragment that cannot be read."""

    code = "invalid_sdpfrag"


@dataclass(frozen=True, slots=True)
class Trickle:
    ufrag: str | None
    pwd: str | None
    candidates: tuple[tuple[str | None, str], ...]
    """(mid of its section, the candidate attribute without ``a=``), at most MAX_TRICKLED."""
    end: bool
    """``a=end-of-candidates``: the client has no more."""
    dropped: int
    """Candidates beyond MAX_TRICKLED, left out."""


def read_trickle(text: str) -> Trickle:
    """Read a fragment; raises InvalidFragment when it is not one."""
    if len(text) > MAX_FRAGMENT_BYTES:
        raise InvalidFragment(f"the fragment is larger than {MAX_FRAGMENT_BYTES} bytes")
    ufrag = pwd = mid = None
    candidates: list[tuple[str | None, str]] = []
    dropped = 0
    end = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("a=ice-ufrag:"):
            ufrag = line.removeprefix("a=ice-ufrag:")
        elif line.startswith("a=ice-pwd:"):
            pwd = line.removeprefix("a=ice-pwd:")
        elif line.startswith("m="):
            mid = None
        elif line.startswith("a=mid:"):
            mid = line.removeprefix("a=mid:")
        elif line == "a=end-of-candidates":
            end = True
        elif line.startswith("a=candidate:"):
            match = _CANDIDATE.match(line)
            if match is None:
                raise InvalidFragment(f"not an ICE candidate: {line[:80]!r}")
            if len(candidates) < MAX_TRICKLED:
                candidates.append((mid, match.group(1)))
            else:
                dropped += 1
        elif not line.startswith(("a=", "c=")):
            raise InvalidFragment(f"not a line of a trickle ICE fragment: {line[:80]!r}")
    if not (ufrag or candidates or end):
        raise InvalidFragment("the fragment holds no ICE credentials, candidates or end mark")
    return Trickle(ufrag, pwd, tuple(candidates), end, dropped)
