"""The driver's watchdog over real sockets: the caller's interrupt and the policy's idle timeout
both end an attempt promptly while the server is silent, and both are recorded for replay."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import openai
import pytest

import engine
from engine.simulator import shapes
from engine.simulator.shapes import (
    SHAPES,
    assemble,
    completed,
    created,
    in_progress,
    output_items,
    split_text,
    text_message,
    to_reply,
)
from engine.simulator.replies import Reply, Script
from machines.records import Stall

from support import TIME_SCALE, run_over_http, trace_lines, within

ANSWER = shapes._ANSWER
DELTAS = split_text(ANSWER, 4)
HALF_ANSWER = "".join(DELTAS[:2])
SINGLE_ATTEMPT = engine.TurnPolicy(max_stream_retries=0, fallback=False)


def _happy() -> Reply:
    message = text_message(ANSWER, deltas=4)
    return to_reply(assemble(created(), in_progress(), message, completed(output_items(message))))


def _half_then_stall(seconds: float) -> Reply:
    message = text_message(ANSWER, deltas=4)
    return to_reply(
        assemble(
            created(), in_progress(), message[:4], Stall(seconds), message[4:],
            completed(output_items(message)),
        )
    )


def _inputs(trace: Path, kind: str) -> list[dict[str, object]]:
    return [r for r in trace_lines(trace) if r.get("kind") == "input" and r.get("input") == kind]


# -- interrupts -----------------------------------------------------------------------------------


def test_event_set_during_a_long_stall_interrupts_promptly(tmp_path: Path) -> None:
    stop = threading.Event()
    timer = threading.Timer(0.2, stop.set)
    delivered: list[str] = []

    def on_text(delta: str) -> None:
        delivered.append(delta)
        if len(delivered) == 2:  # the stall follows the second delta
            timer.start()

    try:
        run = run_over_http(
            Script((_half_then_stall(5.0), _happy())), tmp_path, interrupt=stop,
            callbacks=engine.Callbacks(on_text_delta=on_text),
        )
    finally:
        timer.cancel()
    assert stop.is_set()
    assert run.result.outcome == "interrupted"
    assert run.elapsed < within(1.0, before=5.0)  # a 5 s stall, stopped ~0.2 s in
    assert run.result.output_text == HALF_ANSWER
    assert delivered == DELTAS[:2]
    assert run.result.error is None
    assert run.attempts == [("stream", "retire", "interrupted")]
    assert len(run.requests) == 1  # an interrupt is never retried
    assert len(_inputs(run.trace, "interrupt")) == 1


def test_callable_interrupt_is_polled_during_a_stall(tmp_path: Path) -> None:
    delivered: list[str] = []
    calls: list[float] = []

    def wants_stop() -> bool:
        calls.append(time.monotonic())
        # stop 0.25 s after the second delta (the stall follows it)
        return len(delivered) == 2 and calls[-1] - stalled_since[0] > 0.25

    stalled_since = [0.0]

    def on_text(delta: str) -> None:
        delivered.append(delta)
        stalled_since[0] = time.monotonic()

    run = run_over_http(
        Script((_half_then_stall(5.0),)), tmp_path, interrupt=wants_stop,
        callbacks=engine.Callbacks(on_text_delta=on_text),
    )
    assert run.result.outcome == "interrupted"
    assert run.elapsed < within(1.0, before=5.0)
    assert run.result.output_text == HALF_ANSWER
    assert len(calls) > 3  # asked repeatedly while the socket was silent


def test_interrupt_set_before_the_turn_sends_no_request(tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    delivered: list[str] = []
    run = run_over_http(
        SHAPES["happy_text"], tmp_path, interrupt=stop,
        callbacks=engine.Callbacks(on_text_delta=delivered.append),
    )
    assert run.requests == []
    assert run.result.outcome == "interrupted"
    assert run.attempts == [("stream", "retire", "interrupted")]
    assert run.result.output_text == ""
    assert delivered == []


def test_interrupt_from_a_callback_stops_before_the_next_chunk(tmp_path: Path) -> None:
    stop = threading.Event()
    delivered: list[str] = []

    def on_text(delta: str) -> None:
        delivered.append(delta)
        stop.set()

    run = run_over_http(
        SHAPES["happy_text"], tmp_path, interrupt=stop,
        callbacks=engine.Callbacks(on_text_delta=on_text),
    )
    assert run.result.outcome == "interrupted"
    assert delivered == DELTAS[:1]  # one event per chunk: the chunk after it is never fed
    assert run.result.output_text == DELTAS[0]
    assert len(run.requests) == 1


# -- idle timeout -------------------------------------------------------------------------------


def test_idle_timeout_retires_a_stalled_attempt_and_retries(tmp_path: Path) -> None:
    run = run_over_http(
        SHAPES["stall_then_retry"], tmp_path, policy=engine.TurnPolicy(idle_timeout_s=0.3)
    )
    assert run.attempts == [
        ("stream", "retire", "idle_timeout"),
        ("stream", "terminal", "completed"),
    ]
    assert run.result.outcome == "completed"
    assert run.result.output_text == ANSWER
    assert 0.3 <= run.elapsed < within(1.0, before=2.0)  # the stall is 2 s
    [idle] = _inputs(run.trace, "idle_timeout")
    assert idle["seconds"] == 0.3 and idle["attempt"] == 1


def test_idle_timeout_before_any_event(tmp_path: Path) -> None:
    silent = to_reply([Stall(2.0), *assemble(created())])
    run = run_over_http(
        Script((silent,)), tmp_path,
        policy=engine.TurnPolicy(max_stream_retries=0, fallback=False, idle_timeout_s=0.2),
    )
    assert run.result.outcome == "error"
    assert run.result.error == {
        "message": "no data arrived within the idle timeout",
        "code": "idle_timeout",
        "type": "transport_error",
    }
    assert run.attempts == [("stream", "retire", "idle_timeout")]
    assert run.elapsed < within(1.0, before=2.0)


def test_idle_timeout_is_per_silence_not_per_attempt(tmp_path: Path) -> None:
    """Four pauses of 0.1 s each (0.4 s in all) never trip a 0.35 s idle timeout (all three
    times TIME_SCALE, so that a busy machine's late wake-up is no silence)."""
    pause = 0.1 * TIME_SCALE
    message = text_message(ANSWER, deltas=4)
    paced = []
    for event in assemble(created(), in_progress(), message, completed(output_items(message))):
        paced.append(event)
        if event.get("type") == "response.output_text.delta":
            paced.append(Stall(pause))
    run = run_over_http(
        Script((to_reply(paced),)), tmp_path,
        policy=engine.TurnPolicy(idle_timeout_s=3.5 * pause),
    )
    assert run.attempts == [("stream", "terminal", "completed")]
    assert run.result.output_text == ANSWER
    assert run.elapsed >= 4 * pause


@pytest.mark.parametrize(
    ("idle_timeout_s", "reason"), [(None, "read_timeout"), (0.2, "idle_timeout")]
)
def test_without_idle_timeout_the_clients_read_timeout_decides(
    idle_timeout_s: float | None, reason: str, tmp_path: Path
) -> None:
    stall = within(1.5)  # longer than any limit below: the read or idle timeout ends it
    run = run_over_http(
        Script((_half_then_stall(stall),)), tmp_path,
        policy=engine.TurnPolicy(max_stream_retries=0, fallback=False, idle_timeout_s=idle_timeout_s),
        client_options={"timeout": openai.Timeout(5.0, read=0.4)},
    )
    assert run.attempts == [("stream", "retire", reason)]
    assert run.result.error is not None and run.result.error["code"] == reason
    assert run.result.output_text == HALF_ANSWER
    assert run.elapsed < within(1.0, before=stall)


# -- before the response headers arrive -------------------------------------------------------
def _slow_to_answer() -> "Script":
    from engine.simulator.shapes import SHAPES
    from engine.simulator.replies import Reply, Script

    good = SHAPES["happy_text"].replies[0]
    return Script(replies=(Reply(steps=good.steps, headers_after_s=5.0), good))


def test_interrupt_is_honoured_while_waiting_for_headers() -> None:
    import threading
    import time

    import openai

    import engine
    from engine.simulator.server import ResponsesSimulator

    stop = threading.Event()
    with ResponsesSimulator(_slow_to_answer()) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="k", max_retries=0)
        timer = threading.Timer(0.2, stop.set)
        timer.start()
        began = time.monotonic()
        result = engine.run_turn(client, {"model": "m", "input": "hi"}, interrupt=stop)
        elapsed = time.monotonic() - began
        timer.cancel()
    assert result.outcome == "interrupted"
    assert elapsed < within(1.0, before=5.0)  # the server would answer after 5 s
    assert [(a.final_state, a.reason) for a in result.attempts] == [("retire", "interrupted")]


def test_idle_timeout_covers_waiting_for_headers(tmp_path) -> None:
    import time

    import openai

    import engine
    from engine.simulator.server import ResponsesSimulator

    with ResponsesSimulator(_slow_to_answer()) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="k", max_retries=0)
        began = time.monotonic()
        result = engine.run_turn(
            client, {"model": "m", "input": "hi"},
            policy=engine.TurnPolicy(idle_timeout_s=0.3), trace=tmp_path / "t.jsonl",
        )
        elapsed = time.monotonic() - began
        requests = len(sim.requests)
    assert result.outcome == "completed"
    assert [(a.final_state, a.reason) for a in result.attempts] == [
        ("retire", "idle_timeout"), ("terminal", "completed")
    ]
    assert requests == 2 and elapsed < within(2.0, before=5.0)
    assert engine.replay(tmp_path / "t.jsonl").identical


def test_async_interrupt_is_honoured_while_waiting_for_headers() -> None:
    import asyncio
    import threading
    import time

    import openai

    import engine
    from engine.simulator.server import ResponsesSimulator

    async def run() -> tuple[engine.TurnResult, float]:
        stop = threading.Event()
        with ResponsesSimulator(_slow_to_answer()) as sim:
            client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="k", max_retries=0)
            asyncio.get_running_loop().call_later(0.2, stop.set)
            began = time.monotonic()
            result = await engine.arun_turn(client, {"model": "m", "input": "hi"}, interrupt=stop)
            return result, time.monotonic() - began

    result, elapsed = asyncio.run(run())
    assert result.outcome == "interrupted" and elapsed < within(1.0, before=5.0)
    assert [(a.final_state, a.reason) for a in result.attempts] == [("retire", "interrupted")]
