"""What reaches the caller's callbacks while a turn streams over real HTTP: the first delta once,
answer text never after a tool call of the same attempt, reasoning on its own channel, nothing
repeated after a retry, and a raising callback never breaks the turn."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.simulator import shapes
from engine.simulator.shapes import (
    SHAPES,
    assemble,
    completed,
    created,
    function_call,
    in_progress,
    output_items,
    reasoning_summary,
    split_text,
    text_message,
    to_reply,
)
from engine.simulator.replies import Reply, Script
from machines.records import TransportFault

from support import run_over_http

ANSWER = shapes._ANSWER
REASONING = shapes._REASONING
WEATHER_ARGS = shapes._WEATHER_ARGS


class Heard:
    """Everything the callbacks were told, in one ordered list, plus the threads they ran on."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.threads: set[str] = set()

    def _note(self, kind: str, value: Any = None) -> None:
        self.threads.add(threading.current_thread().name)
        self.events.append((kind, value))

    def callbacks(self) -> engine.Callbacks:
        return engine.Callbacks(
            on_first_delta=lambda: self._note("first"),
            on_text_delta=lambda s: self._note("text", s),
            on_reasoning_delta=lambda s: self._note("reasoning", s),
        )

    def of(self, kind: str) -> list[Any]:
        return [value for k, value in self.events if k == kind]

    @property
    def text(self) -> str:
        return "".join(self.of("text"))


def _cut(text: str, deltas: int, keep: int) -> Reply:
    """An attempt that streams the first `keep` of `deltas` pieces of `text`, then drops."""
    partial = text_message(text, deltas=deltas, finished=False)[: 2 + keep]
    return to_reply([*assemble(created(), in_progress(), partial), TransportFault("drop")])


def _answer(text: str, deltas: int = 4) -> Reply:
    message = text_message(text, deltas=deltas)
    return to_reply(assemble(created(), in_progress(), message, completed(output_items(message))))


def test_first_delta_once_before_the_first_text_and_text_in_order(tmp_path: Path) -> None:
    heard = Heard()
    run = run_over_http(SHAPES["happy_text"], tmp_path, callbacks=heard.callbacks())
    assert heard.events == [("first", None)] + [("text", d) for d in split_text(ANSWER, 4)]
    assert run.result.output_text == ANSWER
    assert heard.threads == {threading.current_thread().name}  # on the caller's thread


def test_first_delta_once_across_a_retry_and_no_text_repeated(tmp_path: Path) -> None:
    heard = Heard()
    run = run_over_http(SHAPES["drop_then_retry"], tmp_path, callbacks=heard.callbacks())
    assert len(run.requests) == 2
    assert heard.of("first") == [None]
    assert heard.events[0] == ("first", None)
    # attempt 1 delivered two pieces; attempt 2 repeats them silently and delivers the rest
    assert heard.of("text") == split_text(ANSWER, 4)
    assert heard.text == ANSWER
    assert run.result.output_text == ANSWER


def test_retry_that_says_something_else_is_not_mixed_into_what_was_delivered(
    tmp_path: Path,
) -> None:
    first = "The capital of France is Paris, a city on the Seine."
    second = "Paris is the capital of France."
    heard = Heard()
    run = run_over_http(
        Script((_cut(first, 4, keep=2), _answer(second))), tmp_path, callbacks=heard.callbacks()
    )
    delivered_before_drop = "".join(split_text(first, 4)[:2])
    assert heard.text == delivered_before_drop  # nothing of the diverging retry was delivered
    assert heard.of("first") == [None]
    assert run.result.outcome == "completed"
    assert run.result.output_text == second  # the retry's own text, never a mix
    assert run.attempts == [("stream", "retire", "drop"), ("stream", "terminal", "completed")]


def test_retry_that_goes_further_delivers_only_what_is_new(tmp_path: Path) -> None:
    """The retry streams the same answer in other pieces: only text past what was delivered is
    delivered, whatever the delta boundaries."""
    heard = Heard()
    run = run_over_http(
        Script((_cut(ANSWER, 3, keep=1), _answer(ANSWER, deltas=7))), tmp_path,
        callbacks=heard.callbacks(),
    )
    assert heard.text == ANSWER
    assert heard.of("text")[0] == split_text(ANSWER, 3)[0]
    assert run.result.output_text == ANSWER


def test_no_answer_text_after_a_tool_call_in_the_same_attempt(tmp_path: Path) -> None:
    before = text_message("Let me check the weather.", deltas=2, output_index=0)
    call = function_call("get_weather", WEATHER_ARGS, deltas=2, output_index=1)
    after = text_message("It is sunny in Paris.", deltas=2, output_index=2)
    tools = [shapes.WEATHER_TOOL]
    stream = assemble(
        created(tools=tools), in_progress(tools=tools), before, call, after,
        completed(output_items(before, call, after), tools=tools),
    )
    heard = Heard()
    run = run_over_http(Script((to_reply(stream),)), tmp_path, callbacks=heard.callbacks())
    assert heard.text == "Let me check the weather."
    assert heard.of("first") == [None]
    assert run.result.outcome == "completed"
    # the result still holds every message of the response, in output order
    assert run.result.output_text == "Let me check the weather.It is sunny in Paris."
    assert run.result.tool_calls == [
        {"call_id": "call_01_sim", "name": "get_weather", "arguments": WEATHER_ARGS,
         "status": "completed", "type": "function_call"}
    ]
    # the machine went back to streaming after the call's output_item.done
    path = [(t.source, t.dest) for t in run.result.transitions if t.machine == "stream_attempt"]
    assert path == [
        ("awaiting_created", "streaming"),
        ("streaming", "tool_call"),
        ("tool_call", "streaming"),
        ("streaming", "terminal"),
    ]


def test_function_call_only_never_fires_first_delta(tmp_path: Path) -> None:
    heard = Heard()
    run = run_over_http(SHAPES["function_call"], tmp_path, callbacks=heard.callbacks())
    assert heard.events == []
    assert len(run.result.tool_calls) == 1


def test_reasoning_goes_to_on_reasoning_delta_only(tmp_path: Path) -> None:
    heard = Heard()
    run = run_over_http(SHAPES["reasoning_then_text"], tmp_path, callbacks=heard.callbacks())
    assert heard.of("reasoning") == split_text(REASONING, 3)
    assert heard.text == ANSWER
    assert REASONING[:10] not in heard.text
    # reasoning streams first; the first-delta signal comes with the first answer text
    kinds = [k for k, _ in heard.events]
    assert kinds == ["reasoning"] * 3 + ["first"] + ["text"] * 3
    assert run.result.output_text == ANSWER


def test_reasoning_is_not_repeated_after_a_retry(tmp_path: Path) -> None:
    reasoning = reasoning_summary(REASONING, deltas=3, output_index=0)
    cut = to_reply([*assemble(created(), in_progress(), reasoning[:4]), TransportFault("drop")])
    answer = text_message(ANSWER, deltas=2, output_index=1)
    good = to_reply(
        assemble(created(), in_progress(), reasoning, answer, completed(output_items(reasoning, answer)))
    )
    heard = Heard()
    run_over_http(Script((cut, good)), tmp_path, callbacks=heard.callbacks())
    assert "".join(heard.of("reasoning")) == REASONING
    assert heard.of("reasoning")[:2] == split_text(REASONING, 3)[:2]
    assert heard.text == ANSWER


@pytest.mark.parametrize("broken", ["on_first_delta", "on_text_delta", "on_reasoning_delta"])
def test_a_raising_callback_does_not_break_the_turn(
    broken: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    heard = Heard()

    def boom(*args: Any) -> None:
        heard.events.append(("boom", args))
        raise RuntimeError("callback bug")

    base = heard.callbacks()
    callbacks = engine.Callbacks(**{
        "on_first_delta": base.on_first_delta,
        "on_text_delta": base.on_text_delta,
        "on_reasoning_delta": base.on_reasoning_delta,
        broken: boom,
    })
    with caplog.at_level(logging.WARNING, logger="streamfsm"):
        run = run_over_http(SHAPES["reasoning_then_text"], tmp_path, callbacks=callbacks)
    assert run.result.outcome == "completed"
    assert run.result.output_text == ANSWER
    calls = {"on_first_delta": 1, "on_text_delta": 3, "on_reasoning_delta": 3}[broken]
    assert len(heard.of("boom")) == calls  # called every time, never disabled
    warnings = [r.getMessage() for r in caplog.records if r.name == "streamfsm"]
    assert len(warnings) == calls
    assert all("callback raised" in w and broken in w for w in warnings)


def test_callbacks_must_be_callable() -> None:
    with pytest.raises(TypeError, match="Callbacks.on_text_delta must be callable or None, not str"):
        engine.Callbacks(on_text_delta="print")  # type: ignore[arg-type]
