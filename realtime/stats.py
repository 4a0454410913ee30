"""Small figures over recent samples (for call snapshots and events)."""

from __future__ import annotations

from collections.abc import Collection

import numpy as np


def percentiles(values: Collection[float]) -> dict[str, float] | None:
    """p50, p95 and max of ``values`` (None when there are none)."""
    if not values:
        return None
    data = np.fromiter(values, dtype=np.float64, count=len(values))
    p50, p95 = np.percentile(data, [50, 95])
    return {
        "p50": round(float(p50), 2),
        "p95": round(float(p95), 2),
        "max": round(float(data.max()), 2),
    }
