"""The driver's watchdog over real sockets: the caller's interrupt and the policy's idle timeout
both end an attempt promptly while the server is silent, and both are recorded for replay."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import openai
import pytest

import engine
from engine import shapes
from engine.shapes import (
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
from engine.simulator import Reply, Script, Stall

from support import run_over_http, trace_lines

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
    assert run.elapsed < 1.0  # a 5 s stall, stopped ~0.2 s in
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
    assert run.elapsed < 1.0
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
    assert 0.3 <= run.elapsed < 1.0  # the stall is 2 s
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
    assert run.elapsed < 1.0


def test_idle_timeout_is_per_silence_not_per_attempt(tmp_path: Path) -> None:
    """Four pauses of 0.1 s each (0.4 s in all) never trip a 0.35 s idle timeout."""
    message = text_message(ANSWER, deltas=4)
    paced = []
    for event in assemble(created(), in_progress(), message, completed(output_items(message))):
        paced.append(event)
        if event.get("type") == "response.output_text.delta":
            paced.append(Stall(0.1))
    run = run_over_http(
        Script((to_reply(paced),)), tmp_path, policy=engine.TurnPolicy(idle_timeout_s=0.35)
    )
    assert run.attempts == [("stream", "terminal", "completed")]
    assert run.result.output_text == ANSWER
    assert run.elapsed >= 0.4


@pytest.mark.parametrize(
    ("idle_timeout_s", "reason"), [(None, "read_timeout"), (0.2, "idle_timeout")]
)
def test_without_idle_timeout_the_clients_read_timeout_decides(
    idle_timeout_s: float | None, reason: str, tmp_path: Path
) -> None:
    run = run_over_http(
        Script((_half_then_stall(1.5),)), tmp_path,
        policy=engine.TurnPolicy(max_stream_retries=0, fallback=False, idle_timeout_s=idle_timeout_s),
        client_options={"timeout": openai.Timeout(5.0, read=0.4)},
    )
    assert run.attempts == [("stream", "retire", reason)]
    assert run.result.error is not None and run.result.error["code"] == reason
    assert run.result.output_text == HALF_ANSWER
    assert run.elapsed < 1.0
