"""A short soak (3 calls x 3 minutes): memory stays flat and no tasks or files pile up.

The server runs on the test's loop (so its asyncio tasks are counted here); the callers run in
a child process (tools/soak.py), so only the server's memory is in this process's RSS. The
long version is ``tools/soak.py --calls 10 --minutes 60`` (BENCHMARKS.md).
"""

from __future__ import annotations

import pytest

from tests.conftest import ServerFactory
from tools.soak import Sample, soak, table

CALLS = 3
SECONDS = 180.0
EVERY_S = 10.0
WARM_S = (50.0, 80.0)
"""The window whose figures are the reference: every call is up and has spoken for a while."""
LATE_S = 130.0
"""From here on, figures are compared with the reference."""
RSS_GROWTH_MIB = 10.0
"""A leak of 64 KiB/s in each call (a second of 16 kHz audio kept every second) adds about
20 MiB between the windows (measured: +19.6 MiB); a steady run grows under 1 MiB."""


TASKS_NOISE = 3
"""Short-lived tasks (an RTCP report, a request being answered) come and go between samples;
a task left behind every unit (3 calls: 3 a second) adds hundreds."""


def window(samples: list[Sample], low: float, high: float) -> list[Sample]:
    return [s for s in samples if low <= s.t_s <= high and s.calls == CALLS]


@pytest.mark.timeout(SECONDS + 120)
async def test_three_calls_for_three_minutes_hold_steady(start_server: ServerFactory) -> None:
    server = await start_server()
    samples, summary = await soak(server.url, CALLS, SECONDS, EVERY_S)
    report = "\n" + table(samples)
    baseline, during, final = samples[0], samples[1:-1], samples[-1]
    warm = window(samples, *WARM_S)
    late = window(samples, LATE_S, SECONDS + 60)
    assert warm and len(late) >= 3, report
    assert all(s.calls == CALLS for s in during if s.t_s >= WARM_S[0]), report
    assert summary is not None and all(heard > 30 for heard in summary["heard_s"]), summary
    # Memory is flat, and nothing piles up while the calls go on ...
    assert max(s.rss_mib for s in late) - max(s.rss_mib for s in warm) < RSS_GROWTH_MIB, report
    assert max(s.tasks for s in late) <= max(s.tasks for s in warm) + TASKS_NOISE, report
    assert max(s.fds for s in late) <= max(s.fds for s in warm) + 2, report
    # ... the units keep their schedule ...
    assert max(s.late_max_ms for s in late) < 1000, report
    assert late[-1].units >= CALLS * (late[-1].t_s - 10), report
    # ... and once the calls have ended, their tasks and files are gone.
    assert final.calls == 0, report
    assert final.tasks <= baseline.tasks, report
    assert final.fds <= baseline.fds + 2, report  # + the sampler's keep-alive connection
