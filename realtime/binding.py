"""The engine side of a call, as the call runtime sees it (the control plane provides it)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

from omni.api import DuplexSession


@dataclass(frozen=True, slots=True)
class EngineBinding:
    """The engine side of a call: a session and the replica thread it must run on."""

    name: str
    session: DuplexSession
    executor: Executor
    waited_s: float = 0.0
    """Time spent waiting for a free replica."""


QueueCallback = Callable[[int, float, int], None]
"""Told (position, estimated wait in seconds, queue length) while the call waits."""


class EngineSource(Protocol):
    """Where a call gets its engine session (the control plane lends replicas)."""

    async def open(self, on_queue: QueueCallback) -> EngineBinding:
        """A session on a free replica, waiting for one if need be; raises CallError."""
        ...

    async def close(self, binding: EngineBinding | None) -> None:
        """Close the session (full cleanup) if one was opened, and give the replica or the
        place in the queue back."""
        ...
