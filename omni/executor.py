"""The thread that owns a model replica.

Every call to a replica (warm-up, open a session, step, close) runs on the replica's own
thread, in order, through a bounded queue; callers ``await`` it from the event loop.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_QUEUE_LIMIT = 8


class ExecutorBusy(RuntimeError):
    """A replica's work queue is full (its caller is not awaiting its work)."""


class ReplicaThread(Executor):
    """A single worker thread with a bounded work queue."""

    def __init__(self, name: str) -> None:
        self._work: queue.Queue[tuple[Future[Any], Callable[[], Any]] | None] = queue.Queue(
            maxsize=_QUEUE_LIMIT
        )
        self._shutdown = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        if self._shutdown:
            raise RuntimeError("replica thread is shut down")
        future: Future[T] = Future()
        try:
            self._work.put_nowait((future, lambda: fn(*args, **kwargs)))
        except queue.Full:
            raise ExecutorBusy(f"{self._thread.name}: {_QUEUE_LIMIT} jobs already queued") from None
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if not self._shutdown:
            self._shutdown = True
            with contextlib.suppress(queue.Full):
                # A full queue means the thread is stuck (its caller gave up on it): it is a
                # daemon thread and ends with the process.
                self._work.put_nowait(None)
        if wait:
            self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            future, job = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except BaseException as exc:
                future.set_exception(exc)
