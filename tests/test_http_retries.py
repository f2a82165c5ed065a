"""Engine-owned HTTP retries over loopback HTTP with the real openai client (contract v2): every
request is an attempt, the client's own retries are off, waits follow the server's words and are
recorded, an interrupt during a wait returns at once, and replay decides the same waits."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import openai
import pytest

import engine
from engine.simulator.shapes import SHAPES
from engine.simulator.replies import Reply, Script, error_body
from engine.simulator.server import ResponsesSimulator
from support import trace_lines, within

REQUEST = {"model": "gpt-5", "input": "What is the capital of France?"}
GOOD = SHAPES["happy_text"].replies[0]


def _summary(result: engine.TurnResult) -> list[tuple[str, str, str]]:
    return [(a.kind, a.final_state, a.reason) for a in result.attempts]


def _waits(trace: Path) -> list[float]:
    return [r["data"] for r in trace_lines(trace) if r.get("effect") == "wait"]


def test_every_request_is_an_attempt_and_the_clients_own_retries_are_off(tmp_path: Path) -> None:
    script = Script([Reply(status=500)] * 6)
    with ResponsesSimulator(script) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=2)
        result = engine.run_turn(client, REQUEST, trace=tmp_path / "t.jsonl")
        requests = len(sim.requests)
    assert requests == 3  # 1 + the client's max_retries, each sent once: not 3 x 3
    assert _summary(result) == [
        ("stream", "retire", "http_500"), ("stream", "retire", "http_500"),
        ("stream", "terminal", "http_500"),
    ]
    assert result.outcome == "error" and result.error is not None and result.error["status"] == 500
    waits = _waits(tmp_path / "t.jsonl")
    assert len(waits) == 2 and 0.25 <= waits[0] <= 0.5 and 0.5 <= waits[1] <= 1.0
    assert engine.replay(tmp_path / "t.jsonl").identical  # the seed in the header: same waits


def test_the_demanded_wait_is_honoured_and_recorded(tmp_path: Path) -> None:
    limited = Reply(status=429, headers=[("retry-after", "1")],
                    body=error_body("Slow down. Please try again in 20s.", type="requests",
                                    code="rate_limit_exceeded"))
    with ResponsesSimulator(Script([limited, GOOD])) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
        started = time.monotonic()
        result = engine.run_turn(client, REQUEST, policy=engine.TurnPolicy(max_http_retries=1),
                                 trace=tmp_path / "t.jsonl")
        took = time.monotonic() - started
    assert result.outcome == "completed"
    assert _waits(tmp_path / "t.jsonl") == [1.0]  # Retry-After wins over the words in the body
    assert took >= 1.0
    http_error = next(r for r in trace_lines(tmp_path / "t.jsonl") if r.get("input") == "http_error")
    assert http_error["headers"]["retry-after"] == "1"


def test_a_demanded_wait_over_the_limit_ends_the_turn_with_that_error() -> None:
    limited = Reply(status=429, headers=[("retry-after-ms", "90000")])
    with ResponsesSimulator(Script([limited, GOOD])) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=3)
        started = time.monotonic()
        result = engine.run_turn(client, REQUEST)
        assert time.monotonic() - started < within(5.0)
        assert len(sim.requests) == 1
    assert _summary(result) == [("stream", "terminal", "http_429")]
    assert result.error is not None and result.error["code"] == "rate_limit_exceeded"


def test_an_interrupt_during_a_wait_returns_at_once(tmp_path: Path) -> None:
    limited = Reply(status=503, headers=[("retry-after", "30")])
    stop = threading.Event()
    with ResponsesSimulator(Script([limited, GOOD])) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=2)
        threading.Timer(0.3, stop.set).start()
        started = time.monotonic()
        result = engine.run_turn(client, REQUEST, interrupt=stop, trace=tmp_path / "t.jsonl")
        took = time.monotonic() - started
        assert len(sim.requests) == 1
    assert took < 1.5
    assert result.outcome == "interrupted"
    assert _summary(result) == [("stream", "retire", "http_503"), ("stream", "retire", "interrupted")]
    assert engine.replay(tmp_path / "t.jsonl").identical


def test_async_turns_retry_the_same_way() -> None:
    busy = Reply(status=502, headers=[("retry-after-ms", "20")])

    async def turn(base_url: str) -> engine.TurnResult:
        async with openai.AsyncOpenAI(base_url=base_url, api_key="sk-test", max_retries=1) as client:
            return await engine.arun_turn(client, REQUEST)

    with ResponsesSimulator(Script([busy, GOOD])) as sim:
        result = asyncio.run(turn(sim.base_url))
        assert len(sim.requests) == 2
    assert result.outcome == "completed"
    assert _summary(result)[0] == ("stream", "retire", "http_502")


def test_no_response_at_all_is_retried_on_the_http_budget_without_a_fallback(tmp_path: Path) -> None:
    from support import closed_port

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{closed_port()}/v1", api_key="sk-x",
                           max_retries=1)
    result = engine.run_turn(client, REQUEST, trace=tmp_path / "t.jsonl")
    assert _summary(result) == [("stream", "retire", "connect_error")] * 2
    assert result.error is not None and result.error["code"] == "connect_error"
    assert engine.replay(tmp_path / "t.jsonl").identical


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_statuses_not_worth_retrying_are_sent_once(status: int) -> None:
    with ResponsesSimulator(Script([Reply(status=status), GOOD])) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=3)
        result = engine.run_turn(client, REQUEST)
        assert len(sim.requests) == 1
    assert _summary(result) == [("stream", "terminal", f"http_{status}")]


def test_a_retry_after_of_hundreds_of_digits_ends_the_turn_without_retrying(tmp_path: Path) -> None:
    """A wait too large to represent is longer than `max_retry_wait_s`: one request, the turn ends
    with that HTTP error at once (it used to read as no wait and retry immediately)."""
    limited = Reply(status=429, headers=[("retry-after", "9" * 400)])
    with ResponsesSimulator(Script([limited, GOOD, GOOD])) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=3)
        started = time.monotonic()
        result = engine.run_turn(client, REQUEST, trace=tmp_path / "t.jsonl")
        assert time.monotonic() - started < within(5.0)
        assert len(sim.requests) == 1
    assert _summary(result) == [("stream", "terminal", "http_429")]
    assert _waits(tmp_path / "t.jsonl") == []
    assert engine.replay(tmp_path / "t.jsonl").identical
