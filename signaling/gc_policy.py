"""The server process's garbage collector: the startup heap frozen, every pause measured.

A full (generation 2) collection walks every container object the process holds, on the
thread that triggered it, which is usually the event loop that carries every call's media.
With the packages a server imports (aiortc, av, aiohttp, numpy, the engines) that is about
90 000 objects and 75-80 ms of CPU on this project's 2-core VM (BENCHMARKS.md): a stall
of every call each time one happens, typically while calls are set up.  Nearly all of those
objects live as long as the process, so once the engine has warmed up the entry point moves
them out of the collector's sight (``gc.freeze``); later collections walk only what came after.

``GcPauses`` times every collection into ``omnirtc_gc_pause_seconds{generation}``.  Both are
used by the entry point only (``signaling.__main__``): they change the whole process.
"""

from __future__ import annotations

import bisect
import gc
import itertools
import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import HistogramMetricFamily, Metric

from omni.pool import ReplicaPool
from signaling.metrics import Metrics

log = logging.getLogger(__name__)

_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
_GENERATIONS = 3


def freeze_heap(freeze: bool = True) -> tuple[int, float]:
    """Collect once, then freeze what is left; returns the objects frozen and the seconds
    the collection took."""
    start = time.perf_counter()
    gc.collect()
    took = time.perf_counter() - start
    if freeze:
        gc.freeze()
    return gc.get_freeze_count(), took


async def freeze_when_ready(pool: ReplicaPool | None, freeze: bool = True) -> None:
    """Freeze the heap once the engine has warmed up (or failed to: the heap is as big as it
    gets either way); at once without a pool (a gateway).  With ``freeze`` off
    (``server.gc_freeze``) only the collection runs, so both are measured alike."""
    if pool is not None:
        await pool.started()
    if not freeze:
        _, took = freeze_heap(freeze=False)
        log.info("startup heap left unfrozen; a full collection took %.0f ms", took * 1000)
        return
    frozen, took = freeze_heap()
    log.info(
        "startup heap frozen: %d objects, last full collection %.0f ms",
        frozen,
        took * 1000,
        extra={"frozen_objects": frozen},
    )


class GcPauses:
    """Times each garbage collection of this process (any thread) for ``/metrics``.

    The callback runs inside the collector, which may have been set off by an allocation
    anywhere, prometheus_client's own locked sections included (its locks do not re-enter):
    so it only counts into plain lists, and ``collect`` (a prometheus Collector) reads them."""

    def __init__(self, metrics: Metrics) -> None:
        self._worker = metrics.worker
        self._counts = [[0] * (len(_BUCKETS) + 1) for _ in range(_GENERATIONS)]
        self._sums = [0.0] * _GENERATIONS
        self._started = 0.0
        self._registry = metrics.registry
        self._registry.register(self)
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        generation = min(int(info["generation"]), _GENERATIONS - 1)
        self._counts[generation][bisect.bisect_left(_BUCKETS, took)] += 1
        self._sums[generation] += took

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            "omnirtc_gc_pause_seconds",
            "Garbage collections of this process, by generation (the thread that ran one "
            "was held for this long)",
            labels=["worker", "generation"],
        )
        for generation in range(_GENERATIONS):
            counts = list(self._counts[generation])
            cumulative = list(itertools.accumulate(counts))
            buckets = [(str(le), float(n)) for le, n in zip(_BUCKETS, cumulative, strict=False)]
            buckets.append(("+Inf", float(cumulative[-1])))
            family.add_metric([self._worker, str(generation)], buckets, self._sums[generation])
        yield family

    def close(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        self._registry.unregister(self)
