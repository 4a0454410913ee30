"""Small parts of the cluster and metrics: worker process settings, the call id on log lines,
the Grafana dashboard's queries."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path

import pytest

from signaling.cluster.config import ClusterSettings
from signaling.cluster.gateway import GatewayMetrics
from signaling.cluster.processes import child_environments
from signaling.cluster.registry import RedisRegistry
from signaling.logctx import CallIdFilter, bind_call_id
from signaling.metrics import Metrics
from signaling.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_worker_processes_get_their_own_port_udp_range_and_name() -> None:
    settings = load_settings(
        None,
        environ={},
        overrides={
            "server.port": 9000,
            "webrtc.udp_ports": [40000, 40099],
            "cluster.processes": 3,
            "cluster.worker_id": "gpu1",
            "cluster.advertise_url": "http://10.0.0.5:9000",
        },
    )
    envs = child_environments(settings, {"KEEP": "1"})
    assert [e["OMNIRTC_SERVER__PORT"] for e in envs] == ["9000", "9001", "9002"]
    assert [e["OMNIRTC_CLUSTER__WORKER_ID"] for e in envs] == ["gpu1-0", "gpu1-1", "gpu1-2"]
    assert envs[2]["OMNIRTC_CLUSTER__ADVERTISE_URL"] == "http://10.0.0.5:9002"
    ranges = [json.loads(e["OMNIRTC_WEBRTC__UDP_PORTS"]) for e in envs]
    assert ranges == [[40000, 40032], [40033, 40065], [40066, 40098]]
    assert all(e["KEEP"] == "1" and e["OMNIRTC_CLUSTER__PROCESSES"] == "1" for e in envs)


def test_too_few_udp_ports_for_the_processes_is_an_error() -> None:
    settings = load_settings(None, {}, {"webrtc.udp_ports": [40000, 40001], "cluster.processes": 3})
    with pytest.raises(ValueError, match="fewer ports"):
        child_environments(settings, {})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("cluster.role", "boss", "role"),
        ("cluster.redis_url", "http://x", "redis_url"),
        ("cluster.worker_ttl_s", 1.0, "worker_ttl_s"),
        ("cluster.advertise_url", "10.0.0.5:80", "advertise_url"),
        ("cluster.key_prefix", "a:b", "key_prefix"),
    ],
)
def test_bad_cluster_settings_are_clear_errors(key: str, value: object, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(None, {}, {key: value})


async def test_log_lines_written_for_a_call_carry_its_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("test.call")
    caplog.handler.addFilter(CallIdFilter())

    async def a_call(call_id: str) -> None:
        bind_call_id(call_id)
        log.warning("inside")

    with caplog.at_level(logging.INFO):
        await asyncio.gather(
            asyncio.create_task(a_call("call_a")), asyncio.create_task(a_call("call_b"))
        )
        log.warning("outside")
    ids = [getattr(r, "call_id", None) for r in caplog.records]
    assert ids == ["call_a", "call_b", None]
    assert [r.call_tag for r in caplog.records] == [" [call_a]", " [call_b]", ""]  # type: ignore[attr-defined]


def test_the_dashboard_queries_only_metrics_we_export() -> None:
    metrics = Metrics("w")
    GatewayMetrics(metrics, RedisRegistry.connect(ClusterSettings()))  # connects lazily
    names = {family.name for family in metrics.registry.collect()}
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "omnirtc.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {
        re.sub(r"_(total|bucket|count|sum)$", "", m)
        for e in exprs
        for m in re.findall(r"omnirtc_\w+", e)
    }
    assert used - names == set()
    assert len(used) >= 12
