"""The error mappers: every member of an ExceptionGroup is read, ours win over bugs."""

from __future__ import annotations

import logging

import pytest
from aiohttp import web

from omni.errors import EngineBusy, EngineUnavailable
from omni.pool import QueueFull
from realtime.errors import EngineFailing, InvalidOffer, describe, leaves
from signaling.body_timeout import BodyTimeout
from signaling.errors import ApiError, to_api_error


def test_leaves_opens_nested_groups_in_order() -> None:
    a, b, c = ValueError("a"), KeyError("b"), RuntimeError("c")
    group = ExceptionGroup("outer", [a, ExceptionGroup("inner", [b, c])])
    assert leaves(group) == [a, b, c]
    assert leaves(a) == [a]


def test_describe_finds_the_engine_failure_behind_a_bug_in_another_task() -> None:
    group = ExceptionGroup(
        "call", [ZeroDivisionError("bug"), EngineFailing("engine failed on 3 units in a row")]
    )
    failure = describe(group)
    assert (failure.code, failure.expected) == ("engine_error", True)
    assert "3 units" in failure.message


def test_describe_prefers_call_errors_then_engine_errors() -> None:
    group = ExceptionGroup("call", [EngineUnavailable("no gpu"), InvalidOffer("bad sdp")])
    assert describe(group).code == "invalid_sdp"
    assert describe(ExceptionGroup("g", [EngineBusy("full")])).code == "busy"


def test_describe_hides_the_details_of_a_bug() -> None:
    failure = describe(ExceptionGroup("call", [KeyError("secret internals")]))
    assert failure == type(failure)("internal_error", "internal error", False)


def test_to_api_error_maps_each_tree_to_its_status() -> None:
    assert to_api_error(InvalidOffer("bad")).status == 400
    busy = to_api_error(QueueFull("all 2 replicas are busy"))
    assert (busy.status, busy.code, busy.headers.get("Retry-After")) == (503, "busy", "5")
    unavailable = to_api_error(EngineUnavailable("could not open a session"))
    assert (unavailable.status, unavailable.code) == (503, "engine_unavailable")
    timeout = to_api_error(BodyTimeout(60))
    assert (timeout.status, timeout.close) == (408, True)
    broken = to_api_error(web.RequestPayloadError("bad chunk"))
    assert (broken.status, broken.code, broken.close) == (400, "bad_request", True)


def test_to_api_error_reads_every_member_of_a_group(caplog: pytest.LogCaptureFixture) -> None:
    own = ApiError(409, "conflict", "taken")
    assert to_api_error(ExceptionGroup("g", [RuntimeError("bug"), own])) is own
    assert to_api_error(ExceptionGroup("g", [RuntimeError("bug"), InvalidOffer("x")])).status == 400
    with caplog.at_level(logging.ERROR):
        error = to_api_error(ExceptionGroup("g", [RuntimeError("secret")]), "POST /v1/calls")
    assert (error.status, error.code, error.message) == (500, "internal_error", "internal error")
    assert "POST /v1/calls" in caplog.text and "secret" in caplog.text, "bugs are logged here"
