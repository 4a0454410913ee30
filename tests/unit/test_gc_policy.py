"""The server's garbage-collection pauses, as /metrics shows them."""

from __future__ import annotations

import contextlib
import gc
import re
import threading

from prometheus_client import generate_latest

from signaling.gc_policy import GcPauses
from signaling.metrics import Metrics


def _count(text: str, generation: int, bucket: str | None = None) -> float:
    if bucket is None:
        pattern = rf'omnirtc_gc_pause_seconds_count\{{generation="{generation}",worker="w"\}} (\S+)'
    else:
        pattern = (
            rf'omnirtc_gc_pause_seconds_bucket\{{generation="{generation}",'
            rf'le="{re.escape(bucket)}",worker="w"\}} (\S+)'
        )
    found = re.search(pattern, text)
    assert found, text
    return float(found.group(1))


def test_each_collection_is_timed_by_generation() -> None:
    metrics = Metrics("w")
    pauses = GcPauses(metrics)
    try:
        before = generate_latest(metrics.registry).decode()
        gc.collect(0)
        gc.collect(2)
        gc.collect(2)
        after = generate_latest(metrics.registry).decode()
    finally:
        pauses.close()
    assert _count(after, 2) - _count(before, 2) == 2
    assert _count(after, 0) - _count(before, 0) >= 1
    assert _count(after, 2, "+Inf") == _count(after, 2)
    assert _count(after, 2, "0.0005") <= _count(after, 2, "0.5") <= _count(after, 2)
    assert "omnirtc_gc_pause_seconds_sum" in after
    # Closed: no longer called, no longer registered (a new one may take its name).
    assert pauses._on_gc not in gc.callbacks
    GcPauses(metrics).close()


def test_a_collection_set_off_inside_prometheus_locked_code_does_not_hang() -> None:
    """The callback takes none of prometheus_client's locks (they do not re-enter): a
    collection that starts while the registry's and every metric's lock are held finishes."""
    metrics = Metrics("w")
    pauses = GcPauses(metrics)
    try:
        done = threading.Event()

        locks = [metrics.registry._lock] + [
            lock
            for collector in metrics.registry._collector_to_names
            if isinstance(lock := getattr(collector, "_lock", None), type(threading.Lock()))
        ]

        def collect_under_the_lock() -> None:
            with contextlib.ExitStack() as held:
                for lock in locks:
                    held.enter_context(lock)
                gc.collect()
            done.set()

        worker = threading.Thread(target=collect_under_the_lock, daemon=True)
        worker.start()
        worker.join(timeout=10)
        assert done.is_set(), "the collection hung on a lock"
    finally:
        pauses.close()
