"""The turn's wall-clock limit (contract v3, "limits and evidence, tightened"):
`TurnPolicy(turn_timeout_s=...)` bounds the whole turn, every attempt and every wait.

- A server that drips a byte now and then keeps the idle timeout from ever firing; the turn
  still ends at its limit, outcome "error", reason and error code `turn_timeout`, the partial
  output kept; recorded as a `turn_timeout` input and replayed identically; sync and async.
- A wait for `Retry-After` that would pass the limit ends the turn at once (no wait, no retry
  announced); a wait within it is honoured, and the limit still holds after it.
- A server that never stops sending cannot keep the turn past its limit either.
- A background response given up at the limit is cancelled, as after an interrupt.
- The trace header's policy carries the limit; a header without it (an older trace) reads.
"""

from __future__ import annotations

import asyncio
import copy
import time
from pathlib import Path
from typing import Any

import openai
import pytest

import engine
from engine.drivers.watchdog import TurnDeadline, Watchdog
from engine.simulator.replies import Reply, Script
from engine.simulator.server import ResponsesSimulator
from engine.simulator.shapes import (
    SHAPES,
    assemble,
    completed,
    created,
    output_items,
    text_message,
    to_reply,
)
from machines.records import Chunk, IdleTimeout, Interrupt, Stall, TurnTimeout
from machines.stream_attempt import State
from machines.turn import TurnMachine
from support import assert_replays_identically, trace_lines, write_trace_lines

REQUEST = {"model": "gpt-5", "input": "Tell me a long story."}
ANSWER = "Once upon a time there was a server that sent one byte a second. "


def _drip(*, quick_events: int = 6, every_s: float = 0.1) -> Script:
    """An answer whose first events come at once and whose rest drips, one byte every
    `every_s` seconds: never silent for an idle timeout, never done within a second."""
    message = text_message(ANSWER, deltas=12)
    events = assemble(created(), message, completed(output_items(message)))
    chunks = [step.data for step in to_reply(events).steps if isinstance(step, Chunk)]
    steps: list[Chunk | Stall] = [Chunk(chunk) for chunk in chunks[:quick_events]]
    for byte in b"".join(chunks[quick_events:]):
        steps += [Stall(every_s), Chunk(bytes([byte]))]
    return Script([Reply(steps=tuple(steps))] * 3)


def _summary(result: engine.TurnResult) -> list[tuple[str, str, str]]:
    return [(a.kind, a.final_state, a.reason) for a in result.attempts]


def _client(sim: ResponsesSimulator, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0, **options)


# -- a server that drips --------------------------------------------------------------------------


def test_a_dripping_server_cannot_keep_the_turn_past_its_limit(tmp_path: Path) -> None:
    delivered: list[str] = []
    policy = engine.TurnPolicy(idle_timeout_s=1.0, turn_timeout_s=1.0, max_stream_retries=2)
    trace = tmp_path / "drip.jsonl"
    with ResponsesSimulator(_drip()) as sim:
        started = time.monotonic()
        result = engine.run_turn(
            _client(sim), REQUEST, policy=policy, trace=trace,
            callbacks=engine.Callbacks(on_text_delta=delivered.append),
        )
        took = time.monotonic() - started
        requests = len(sim.requests)
    assert 1.0 <= took < 1.6
    assert requests == 1  # nothing is retried past the limit, stream budget or not
    assert result.outcome == "error"
    assert _summary(result) == [("stream", "retire", "turn_timeout")]
    assert result.error == {
        "message": "the turn ran past its turn_timeout_s", "code": "turn_timeout",
        "type": "turn_timeout",
    }
    shown = "".join(delivered)
    assert shown and result.output_text.startswith(shown)  # the partial output is kept
    lines = trace_lines(trace)
    assert lines[0]["policy"]["turn_timeout_s"] == 1.0
    [timeout] = [r for r in lines if r.get("input") == "turn_timeout"]
    assert timeout["seconds"] == 1.0 and timeout["t"] >= 1.0
    assert_replays_identically(trace)


def test_the_async_driver_keeps_the_same_limit(tmp_path: Path) -> None:
    policy = engine.TurnPolicy(idle_timeout_s=1.0, turn_timeout_s=0.8)
    trace = tmp_path / "drip.jsonl"

    async def turn(base_url: str) -> engine.TurnResult:
        async with openai.AsyncOpenAI(base_url=base_url, api_key="sk-test", max_retries=0) as client:
            return await engine.arun_turn(client, REQUEST, policy=policy, trace=trace)

    with ResponsesSimulator(_drip()) as sim:
        started = time.monotonic()
        result = asyncio.run(turn(sim.base_url))
        took = time.monotonic() - started
    assert 0.8 <= took < 1.4
    assert _summary(result) == [("stream", "retire", "turn_timeout")]
    assert result.output_text
    assert_replays_identically(trace)


def test_a_server_that_never_stops_sending_is_cut_at_the_limit() -> None:
    """A continuous stream (no silence at all) longer than the limit: the limit is looked at
    before every read is used, not only after a silent wait."""
    message = text_message("word " * 20_000, deltas=20_000)
    events = assemble(created(), message, completed(output_items(message)))
    steps = [step for step in to_reply(events).steps if isinstance(step, Chunk)]
    slow = [item for step in steps for item in (step, Stall(0.0005))]
    with ResponsesSimulator(Script([Reply(steps=tuple(slow))])) as sim:
        started = time.monotonic()
        result = engine.run_turn(_client(sim), REQUEST,
                                 policy=engine.TurnPolicy(turn_timeout_s=0.5))
        took = time.monotonic() - started
    assert took < 1.5
    assert _summary(result) == [("stream", "retire", "turn_timeout")]
    assert 0 < len(result.output_text) < len("word " * 20_000)


# -- waits ----------------------------------------------------------------------------------------


def test_a_retry_after_that_would_pass_the_limit_ends_the_turn_at_once(tmp_path: Path) -> None:
    limited = Reply(status=429, headers=[("retry-after", "5")])
    notices: list[engine.RetryNotice] = []
    trace = tmp_path / "t.jsonl"
    with ResponsesSimulator(Script([limited, SHAPES["happy_text"].replies[0]])) as sim:
        started = time.monotonic()
        result = engine.run_turn(
            _client(sim), REQUEST, trace=trace,
            policy=engine.TurnPolicy(max_http_retries=2, turn_timeout_s=2.0),
            callbacks=engine.Callbacks(on_retry=notices.append),
        )
        took = time.monotonic() - started
        requests = len(sim.requests)
    assert took < 0.5 and requests == 1
    assert notices == []  # no retry comes, so none is announced
    assert _summary(result) == [("stream", "retire", "http_429"), ("stream", "retire", "turn_timeout")]
    assert result.outcome == "error" and result.error is not None
    assert result.error["code"] == "turn_timeout"
    assert_replays_identically(trace)


def test_a_wait_within_the_limit_is_honoured_and_the_limit_still_holds(tmp_path: Path) -> None:
    limited = Reply(status=503, headers=[("retry-after", "0.4")])
    trace = tmp_path / "t.jsonl"
    with ResponsesSimulator(Script([limited, *_drip().replies])) as sim:
        started = time.monotonic()
        result = engine.run_turn(
            _client(sim), REQUEST, trace=trace,
            policy=engine.TurnPolicy(max_http_retries=1, idle_timeout_s=1.0, turn_timeout_s=1.2),
        )
        took = time.monotonic() - started
        requests = len(sim.requests)
    assert 1.2 <= took < 1.8 and requests == 2
    assert _summary(result) == [("stream", "retire", "http_503"), ("stream", "retire", "turn_timeout")]
    assert [r["data"] for r in trace_lines(trace) if r.get("effect") == "wait"] == [0.4]
    assert_replays_identically(trace)


# -- background responses -------------------------------------------------------------------------


def test_a_background_response_given_up_at_the_limit_is_cancelled() -> None:
    message = text_message(ANSWER, deltas=12)
    events = assemble(created(), message, completed(output_items(message)))
    reply = Reply(steps=(*to_reply(events[:4]).steps, Stall(5.0), *to_reply(events[4:]).steps),
                  background_drop_after_events=100)
    with ResponsesSimulator(Script([reply])) as sim:
        result = engine.run_turn(_client(sim), {**REQUEST, "background": True},
                                 policy=engine.TurnPolicy(turn_timeout_s=0.5))
        paths = [(r.method, r.path) for r in sim.requests]
    assert _summary(result) == [("stream", "retire", "turn_timeout")]
    assert paths[-1][0] == "POST" and paths[-1][1].endswith("/cancel")


# -- the machines and the watchdog ----------------------------------------------------------------


def test_the_turn_opens_nothing_more_after_its_limit_whatever_budget_is_left() -> None:
    turn = TurnMachine(engine.TurnPolicy(max_stream_retries=3, fallback=True, turn_timeout_s=1.0))
    attempt, _ = turn.next_attempt()
    assert attempt is not None
    attempt.receive(TurnTimeout(1.0))
    assert attempt.state is State.RETIRE
    nothing, decisions = turn.next_attempt()
    assert nothing is None
    assert [d.trigger for d in decisions if hasattr(d, "trigger")] == ["finish"]
    assert turn.result([]).error == {
        "message": "the turn ran past its turn_timeout_s", "code": "turn_timeout",
        "type": "turn_timeout",
    }


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_watchdog_ends_an_attempt_at_the_deadline_in_every_way_it_looks() -> None:
    clock = _Clock()
    deadline = TurnDeadline(at=101.0, seconds=1.0)
    watchdog = Watchdog(clock, lambda: False, idle_timeout_s=5.0, deadline=deadline)
    assert watchdog.wait_s() == pytest.approx(0.02)
    clock.now = 100.99
    assert watchdog.wait_s() == pytest.approx(0.01)  # it wakes at the deadline, not later
    assert watchdog.before_sending() is None and watchdog.after_silence() is None
    assert watchdog.before_item(True) is None
    clock.now = 101.0
    assert watchdog.before_sending() == TurnTimeout(1.0)
    assert watchdog.after_silence() == TurnTimeout(1.0)
    assert watchdog.before_item(True) == TurnTimeout(1.0)
    # the caller's word comes first, the turn's limit before the silence's
    assert Watchdog(clock, lambda: True, 5.0, deadline=deadline).after_silence() == Interrupt()
    clock.now = 200.0
    late = Watchdog(clock, lambda: False, 0.5, deadline=TurnDeadline(at=150.0, seconds=50.0))
    clock.now = 201.0
    assert late.after_silence() == TurnTimeout(50.0)
    assert Watchdog(clock, lambda: False, 0.5).after_silence() is None
    quiet = Watchdog(clock, lambda: False, 0.5)
    clock.now = 202.0
    assert quiet.after_silence() == IdleTimeout(0.5)


# -- the trace header -------------------------------------------------------------------------------


def test_a_header_without_the_limit_reads_as_a_turn_without_one(tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    with ResponsesSimulator(SHAPES["drop_then_retry"]) as sim:
        engine.run_turn(_client(sim), REQUEST, trace=trace)
    lines = trace_lines(trace)
    assert lines[0]["policy"]["turn_timeout_s"] is None
    older = copy.deepcopy(lines)
    del older[0]["policy"]["turn_timeout_s"]
    write_trace_lines(trace, older)
    assert_replays_identically(trace)
    for wrong in (True, -1, 0, "1", [1]):
        older[0]["policy"]["turn_timeout_s"] = wrong
        write_trace_lines(trace, older)
        with pytest.raises(engine.TraceError):
            engine.replay(trace)


@pytest.mark.parametrize("wrong", [0, -1.0, float("nan"), True, "5"])
def test_the_limit_must_be_a_positive_number_of_seconds(wrong: Any) -> None:
    with pytest.raises(ValueError):
        engine.TurnPolicy(turn_timeout_s=wrong)
