"""What other parts of the control plane learn about calls (metrics, the cluster registry).

``CallManager`` tells every hook when a call is admitted and when it has ended and freed
everything; a hook never holds a call up for long and never raises into it.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from realtime.session import Call


class CallHooks(Protocol):
    def admitted(self, call: Call, queued: bool) -> None:
        """``call`` was admitted (``queued``: it waits for a free replica); runs on the loop."""
        ...

    async def ended(self, call: Call) -> None:
        """``call`` has ended and freed its peer and replica."""
        ...


CLAIMED_CALL_ID = web.RequestKey("claimed_call_id", str)
"""Request key: the id a gateway gave the call it placed on this worker (the worker's
admission middleware sets it once it has checked the claim in Redis)."""
