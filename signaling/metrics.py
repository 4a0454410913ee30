"""Prometheus metrics of one process (prometheus-client), served at ``/metrics``.

Every series carries a ``worker`` label (this process's name in the cluster, or the host
name of a single process), so one dashboard shows each worker of a cluster.

- Counters and gauges of calls, the replica queue and admission results are updated as
  things happen (:meth:`Metrics.admitted`, :meth:`Metrics.ended`, the admission middleware).
- Per-unit figures (unit lateness, step time, dropped units, playout underruns, engine
  errors) live in each call's own counters; :class:`Metrics` reads what is new in them at
  every scrape, every ``SAMPLE_INTERVAL_S`` and when a call ends, so nothing on the media
  path knows about metrics.  A call keeps its last 600 unit timings, so a gap of up to ten
  minutes between samples loses none.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from realtime.session import Call
from signaling.errors import Handler

log = logging.getLogger(__name__)

SAMPLE_INTERVAL_S = 10.0
LATENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)
ADMISSION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
OFFER_PATHS = ("/v1/calls", "/v1/whip")


def default_worker_name() -> str:
    return socket.gethostname()


@dataclass(slots=True)
class _Seen:
    """What of a call's counters has been counted already."""

    call: Call
    steps: int = 0
    dropped: int = 0
    errors: int = 0
    underruns: int = 0


class Metrics:
    """The metrics of one process; also the CallManager hook that keeps them."""

    def __init__(self, worker: str) -> None:
        self.worker = worker
        self.registry = CollectorRegistry()
        r, w = self.registry, ("worker",)
        self._calls = Counter("omnirtc_calls", "Calls admitted", [*w, "mode"], registry=r)
        self._ended = Counter("omnirtc_calls_ended", "Calls ended", [*w, "reason"], registry=r)
        self._queued = Counter(
            "omnirtc_calls_queued", "Calls that had to wait for a replica", w, registry=r
        )
        self.active = Gauge("omnirtc_calls_active", "Calls in progress", w, registry=r)
        self.queue = Gauge("omnirtc_queue_length", "Calls waiting for a replica", w, registry=r)
        self.replicas = Gauge("omnirtc_replicas", "Engine replicas", w, registry=r)
        self.replicas_free = Gauge("omnirtc_replicas_free", "Idle replicas", w, registry=r)
        self._admissions = Counter(
            "omnirtc_admissions",
            "Offers answered, by result (admitted, busy, not_ready, rejected, error)",
            [*w, "result"],
            registry=r,
        )
        self._admission_s = Histogram(
            "omnirtc_admission_seconds",
            "Time from an offer's arrival to its answer (admitted calls)",
            w,
            buckets=ADMISSION_BUCKETS,
            registry=r,
        )
        self._lateness = Histogram(
            "omnirtc_unit_lateness_seconds",
            "How late each unit's engine step started after the unit was due",
            w,
            buckets=LATENESS_BUCKETS,
            registry=r,
        )
        self._step = Histogram(
            "omnirtc_step_seconds", "Engine step time per unit", w, buckets=STEP_BUCKETS, registry=r
        )
        self._dropped = Counter(
            "omnirtc_dropped_units", "Units dropped because the engine was behind", w, registry=r
        )
        self._underruns = Counter(
            "omnirtc_playout_underruns", "Times speech ran dry mid-stream", w, registry=r
        )
        self._engine_errors = Counter(
            "omnirtc_engine_errors", "Engine steps that failed", w, registry=r
        )
        self._seen: dict[str, _Seen] = {}
        self.refresh: Callable[[], Awaitable[None]] | None = None
        """Brings gauges up to date before each scrape (set by the app that serves them)."""

    # ------------------------------------------------------------ CallHooks

    def admitted(self, call: Call, queued: bool) -> None:
        self._calls.labels(self.worker, call.mode.value).inc()
        if queued:
            self._queued.labels(self.worker).inc()
        self._seen[call.call_id] = _Seen(call)

    async def ended(self, call: Call) -> None:
        seen = self._seen.pop(call.call_id, None)
        if seen is not None:
            self._sample(seen)
        self._ended.labels(self.worker, call.end_reason or "ended").inc()

    # ------------------------------------------------------------ samples

    def sample(self) -> None:
        """Count what is new in every live call's counters."""
        for seen in self._seen.values():
            self._sample(seen)

    def _sample(self, seen: _Seen) -> None:
        loop, playout = seen.call.loop, seen.call.playout
        new = loop.steps - seen.steps
        if new > 0:
            worker = self.worker
            for late_ms in _last(loop.late_ms, new):
                self._lateness.labels(worker).observe(max(0.0, late_ms) / 1000)
            for step_ms in _last(loop.step_ms, new):
                self._step.labels(worker).observe(step_ms / 1000)
            seen.steps = loop.steps
        seen.dropped = _add(self._dropped.labels(self.worker), loop.dropped_units, seen.dropped)
        seen.errors = _add(self._engine_errors.labels(self.worker), loop.errors, seen.errors)
        seen.underruns = _add(
            self._underruns.labels(self.worker), playout.underruns, seen.underruns
        )

    def admission(self, result: str, seconds: float | None = None) -> None:
        self._admissions.labels(self.worker, result).inc()
        if seconds is not None:
            self._admission_s.labels(self.worker).observe(seconds)

    def exposition(self) -> bytes:
        self.sample()
        return generate_latest(self.registry)

    # ------------------------------------------------------------ aiohttp

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Counts every offer's result and times admitted ones.  It sits outside the error
        mapper, so it sees every answer as a response, errors included."""
        if request.method != "POST" or request.path not in OFFER_PATHS:
            return await handler(request)
        start = time.perf_counter()
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            self.admission(_result(exc.status, ""))
            raise
        except BaseException:
            self.admission("error")
            raise
        if response.status == 201:
            self.admission("admitted", time.perf_counter() - start)
        else:
            self.admission(_result(response.status, _error_code(response)))
        return response

    async def lifetime(self, app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: sample the live calls every ``SAMPLE_INTERVAL_S``."""
        task = asyncio.get_running_loop().create_task(self._sampler(), name="metrics-sampler")
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def _sampler(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL_S)
            self.sample()


def _result(status: int, code: str) -> str:
    if code in ("busy", "not_ready"):
        return code
    if status == 503:
        return "busy"
    return "rejected" if status < 500 else "error"


def _error_code(response: web.StreamResponse) -> str:
    """The ``code`` of one of our JSON error bodies ('' for anything else)."""
    body = response.body if isinstance(response, web.Response) else None
    if not isinstance(body, bytes) or len(body) > 4096:
        return ""
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return ""
    return code if isinstance(code, str) else ""


def _last(values: Iterable[float], count: int) -> list[float]:
    data = list(values)
    return data[-count:] if count < len(data) else data


def _add(counter: Counter, total: int, seen: int) -> int:
    if total > seen:
        counter.inc(total - seen)
    return max(total, seen)


async def metrics_handler(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    if metrics.refresh is not None:
        await metrics.refresh()
    body = metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


METRICS = web.AppKey("metrics", Metrics)
