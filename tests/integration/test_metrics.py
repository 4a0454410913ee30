"""/metrics: Prometheus text with the calls, queue, admissions and per-unit figures."""

from __future__ import annotations

import asyncio

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from omni.pool import ReplicaPool
from tests.conftest import ServerFactory
from tests.support.caller import Caller, make_offer
from tests.support.engines import ScriptedEngine


async def scrape(
    http: aiohttp.ClientSession, url: str
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample as (name, labels without ``worker``) -> value."""
    async with http.get(f"{url}/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            assert s.labels.get("worker"), s
            labels = frozenset((k, v) for k, v in s.labels.items() if k != "worker")
            samples[(s.name, labels)] = s.value
    return samples


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_count_calls_admissions_and_unit_figures(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    # One replica that speaks every unit but takes 1.2 s a step: units are late, some are
    # dropped, speech runs dry between units; unit 2 fails.
    engine = ScriptedEngine(replicas=1, speak_from=0, fail_on=frozenset({2}), step_s=1.2)
    server = await start_server(pool=ReplicaPool(engine, max_queue=0), call__max_pending_units=1)
    before = await scrape(http, server.url)
    assert value(before, "omnirtc_replicas") == 1
    assert value(before, "omnirtc_calls_active") == 0
    caller = Caller(server.url)
    try:
        await caller.call(http)
        async with http.post(
            f"{server.url}/v1/calls", json={"sdp": await make_offer(), "type": "offer"}
        ) as r:
            assert r.status == 503
        async with http.post(
            f"{server.url}/v1/calls", data=b"{", headers={"Content-Type": "application/json"}
        ) as r:
            assert r.status == 400
        await caller.wait_for("unit", timeout=20, count=4)
        await asyncio.sleep(1.5)
        during = await scrape(http, server.url)
        assert value(during, "omnirtc_calls_total", mode="engine") == 1
        assert value(during, "omnirtc_calls_active") == 1
        assert value(during, "omnirtc_replicas_free") == 0
        assert value(during, "omnirtc_admissions_total", result="admitted") == 1
        assert value(during, "omnirtc_admissions_total", result="busy") == 1
        assert value(during, "omnirtc_admissions_total", result="rejected") == 1
        assert value(during, "omnirtc_admission_seconds_count") == 1
        steps = value(during, "omnirtc_step_seconds_count")
        assert steps >= 3
        assert value(during, "omnirtc_step_seconds_bucket", le="1.0") < steps  # all > 1 s
        assert value(during, "omnirtc_unit_lateness_seconds_count") == steps
        assert value(during, "omnirtc_engine_errors_total") == 1
        assert value(during, "omnirtc_dropped_units_total") >= 1
        assert value(during, "omnirtc_playout_underruns_total") >= 1
        async with http.delete(f"{server.url}/v1/calls/{caller.call_id}") as r:
            assert r.status == 204
    finally:
        await caller.close()
    after = await scrape(http, server.url)
    assert value(after, "omnirtc_calls_active") == 0
    assert value(after, "omnirtc_calls_ended_total", reason="deleted") == 1
    assert value(after, "omnirtc_step_seconds_count") >= steps  # counted once, not again
    assert value(after, "omnirtc_engine_errors_total") == 1
