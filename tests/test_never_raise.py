"""Contract v2, never raise: whatever the HTTP client raises while sending the request or reading
the body is a transport fault (before the response headers `connect_error`, after them `drop` or
`read_timeout`), with its class name as detail; only KeyboardInterrupt, SystemExit and a wrong
call pass through. Over real sockets (the simulator) and through httpx transports that raise."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Iterator

import attrs
import httpx2
import openai
import pytest

import engine
from engine.drivers.transport import observation_of
from engine.simulator.shapes import SHAPES
from engine.simulator.server import ResponsesSimulator
from engine.simulator.replies import Script
from machines.records import TransportFault

from support import API_KEY, REQUEST, assert_replays_identically, trace_lines

SINGLE = engine.TurnPolicy(max_stream_retries=0, fallback=False)


def _gzip_labelled() -> Script:
    """A 200 event stream whose body is plain text but labelled `Content-Encoding: gzip`."""
    good = SHAPES["happy_text"].replies[0]
    return Script((attrs.evolve(good, headers=(*good.headers, ("content-encoding", "gzip"))),) * 3)


def _faults(trace: Path) -> list[dict[str, Any]]:
    return [
        r for r in trace_lines(trace)
        if r.get("kind") == "input" and r.get("input") == "fault"
    ]


# -- a body the HTTP library cannot decode -----------------------------------------------------


def test_a_body_labelled_gzip_that_is_not_is_a_drop_not_an_exception(tmp_path: Path) -> None:
    trace = tmp_path / "gzip.jsonl"
    with ResponsesSimulator(_gzip_labelled()) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key=API_KEY, max_retries=0)
        result = engine.run_turn(client, dict(REQUEST), trace=trace)
        assert sim.server_errors == []
    assert result.outcome == "error"
    assert [(a.kind, a.reason) for a in result.attempts] == [
        ("stream", "drop"), ("stream", "drop"), ("fallback", "drop")
    ]
    assert {f["detail"] for f in _faults(trace)} == {"DecodingError"}
    assert_replays_identically(trace)


def test_arun_turn_takes_the_same_undecodable_body_as_a_drop(tmp_path: Path) -> None:
    trace = tmp_path / "agzip.jsonl"

    async def run() -> engine.TurnResult:
        with ResponsesSimulator(_gzip_labelled()) as sim:
            client = openai.AsyncOpenAI(base_url=sim.base_url, api_key=API_KEY, max_retries=0)
            return await engine.arun_turn(client, dict(REQUEST), policy=SINGLE, trace=trace)

    result = asyncio.run(run())
    assert result.outcome == "error"
    assert [a.reason for a in result.attempts] == ["drop"]
    assert [f["detail"] for f in _faults(trace)] == ["DecodingError"]
    assert_replays_identically(trace)


# -- transports that raise what they like ------------------------------------------------------


class Weird(Exception):
    """Something no HTTP library documents."""


def _raising_client(error: BaseException) -> openai.OpenAI:
    def handler(request: httpx2.Request) -> httpx2.Response:
        raise error

    http = httpx2.Client(transport=httpx2.MockTransport(handler))
    return openai.OpenAI(base_url="http://sim.invalid/v1", api_key=API_KEY, max_retries=0, http_client=http)


def _body_raising_client(error: BaseException) -> openai.OpenAI:
    frames = b"".join(SHAPES["happy_text"].replies[0].steps[i].data for i in range(2))  # type: ignore[union-attr]

    def body() -> Iterator[bytes]:
        yield frames
        raise error

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body())

    http = httpx2.Client(transport=httpx2.MockTransport(handler))
    return openai.OpenAI(base_url="http://sim.invalid/v1", api_key=API_KEY, max_retries=0, http_client=http)


@pytest.mark.parametrize("error", [Weird("no"), RuntimeError("x"), TypeError("y"), ValueError("z"),
                                   OSError("w"), httpx2.ReadTimeout("slow")])
def test_any_exception_before_the_headers_is_a_connect_error(error: Exception, tmp_path: Path) -> None:
    trace = tmp_path / "open.jsonl"
    result = engine.run_turn(_raising_client(error), dict(REQUEST), policy=SINGLE, trace=trace)
    assert result.outcome == "error"
    assert [a.reason for a in result.attempts] == ["connect_error"]
    [fault] = _faults(trace)
    assert fault["detail"] in (type(error).__name__, "APIConnectionError", "APITimeoutError")
    assert_replays_identically(trace)


@pytest.mark.parametrize(("error", "reason"), [(Weird("no"), "drop"), (RuntimeError("x"), "drop"),
                                               (httpx2.ReadTimeout("slow"), "read_timeout")])
def test_any_exception_while_reading_the_body_is_a_drop_or_read_timeout(
    error: Exception, reason: str, tmp_path: Path
) -> None:
    trace = tmp_path / "read.jsonl"
    result = engine.run_turn(_body_raising_client(error), dict(REQUEST), policy=SINGLE, trace=trace)
    assert result.outcome == "error"
    assert [a.reason for a in result.attempts] == [reason]
    assert [f["detail"] for f in _faults(trace)] == [type(error).__name__]
    assert_replays_identically(trace)


def test_arun_turn_takes_an_exception_before_the_headers_as_a_connect_error() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        raise Weird("no")

    async def run() -> engine.TurnResult:
        http = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
        client = openai.AsyncOpenAI(
            base_url="http://sim.invalid/v1", api_key=API_KEY, max_retries=0, http_client=http
        )
        return await engine.arun_turn(client, dict(REQUEST), policy=SINGLE)

    result = asyncio.run(run())
    assert [a.reason for a in result.attempts] == ["connect_error"]


@pytest.mark.parametrize("error", [KeyboardInterrupt(), SystemExit(3)])
def test_keyboard_interrupt_and_system_exit_pass_through(error: BaseException) -> None:
    with pytest.raises(type(error)):
        engine.run_turn(_raising_client(error), dict(REQUEST), policy=SINGLE)


def test_a_request_the_sdk_cannot_serialise_is_a_wrong_call() -> None:
    with pytest.raises(TypeError):
        engine.run_turn(
            _raising_client(Weird("never sent")), {"model": "m", "input": object()}, policy=SINGLE
        )


def test_classification_of_what_readers_catch() -> None:
    assert observation_of(Weird(), opening=True) == TransportFault("connect_error", "Weird")
    assert observation_of(Weird(), opening=False) == TransportFault("drop", "Weird")
    assert observation_of(httpx2.DecodingError("x"), opening=False) == TransportFault(
        "drop", "DecodingError"
    )
    assert observation_of(TimeoutError(), opening=False) == TransportFault("read_timeout", "TimeoutError")
    assert observation_of(TimeoutError(), opening=True) == TransportFault("connect_error", "TimeoutError")
    assert observation_of(KeyboardInterrupt(), opening=True) is None
    assert observation_of(SystemExit(), opening=False) is None
    # raised by nothing below the SDK: a mistake in the call, handed back to be raised
    assert observation_of(TypeError("bad"), opening=True) is None
    # the same class raised inside the HTTP client is the network's doing
    assert observation_of(TypeError("bad"), opening=False) == TransportFault("drop", "TypeError")
