"""Resuming background responses, machine by machine: which attempt follows a broken background
stream, what a resume attempt takes over, which events it ignores, and the cancel an interrupt
decides."""

from __future__ import annotations

from typing import Any

import pytest

from engine.simulator.shapes import (
    RESPONSE_ID,
    assemble,
    completed,
    created,
    function_call,
    output_items,
    text_message,
)
from machines.records import (
    EndOfStream,
    HttpError,
    IdleTimeout,
    Interrupt,
    TransportFault,
    TurnPolicy,
    TurnResult,
)
from machines.turn import TurnMachine

from support import Decisions
from test_turn_machine import run as run_turn

DROP = TransportFault("drop", "RemoteProtocolError")
NOT_FOUND = HttpError(404, {"error": {"message": "No response with that id", "code": None,
                                      "type": "invalid_request_error"}})


def answer_events(text: str = "Hello brave new world", deltas: int = 4) -> list[dict[str, Any]]:
    """A whole background answer, numbered from 0 as the server numbers it."""
    message = text_message(text, deltas=deltas)
    events = assemble(created(), message, completed(output_items(message)))
    return [e for e in events if isinstance(e, dict)]


def run(
    *attempts: list[Any], policy: TurnPolicy | None = None, background: bool = True
) -> tuple[TurnMachine, Decisions, TurnResult]:
    """`test_turn_machine.run` for a background request (by default) with two stream retries."""
    return run_turn(policy or TurnPolicy(max_stream_retries=2), *attempts, background=background)


def kinds(result: TurnResult) -> list[tuple[str, str]]:
    return [(a.kind, a.reason) for a in result.attempts]


@pytest.mark.parametrize("cut", range(1, 8))
@pytest.mark.parametrize("fault", [DROP, EndOfStream(), IdleTimeout(0.5),
                                   TransportFault("read_timeout", "ReadTimeout")])
def test_a_broken_background_stream_is_resumed_after_its_last_sequence_number(
    cut: int, fault: Any
) -> None:
    """Cut after `cut` events (response.created included), by any byte-stream fault: the resume
    continues after the last sequence number and the text is delivered once, in full."""
    events = answer_events()
    turn, sink, result = run([*events[:cut], fault], events[cut:])
    assert kinds(result) == [("stream", fault_reason(fault)), ("resume", "completed")]
    assert turn.attempts[1].resume_point == (RESPONSE_ID, cut - 1)
    assert result.outcome == "completed"
    assert "".join(sink.effects("text_delta")) == "Hello brave new world"
    assert result.output_text == "Hello brave new world"
    assert len(sink.effects("first_delta")) == 1


def fault_reason(fault: Any) -> str:
    if isinstance(fault, TransportFault):
        return fault.kind
    return "eof" if isinstance(fault, EndOfStream) else "idle_timeout"


@pytest.mark.parametrize("overlap", [1, 2, 4])
def test_events_a_resume_repeats_are_recorded_and_ignored(overlap: int) -> None:
    """A server that repeats events at or below the resume point (or sends one twice) changes
    nothing: each is a `stale_event` stay, and the text is delivered exactly once."""
    events = answer_events()
    cut = 5
    repeated = events[cut - overlap:cut]
    resumed = [*repeated, events[cut], events[cut], *events[cut + 1:]]
    turn, sink, result = run([*events[:cut], DROP], resumed)
    assert "".join(sink.effects("text_delta")) == "Hello brave new world"
    assert result.outcome == "completed"
    assert turn.attempts[1].stale == overlap + 1
    assert result.output_text == "Hello brave new world"


def test_a_resume_starts_in_the_state_the_stream_broke_in() -> None:
    """Broken in the middle of a function call's arguments: the resume is still in `tool_call`,
    assembles the rest of the arguments, and delivers no text after the call."""
    call = function_call("lookup", '{"city": "Paris", "days": 3}', deltas=4, call_id="call_1")
    events = [e for e in assemble(created(), call, completed(output_items(call)))
              if isinstance(e, dict)]
    cut = 4  # created, item added, two argument deltas
    turn, sink, result = run([*events[:cut], DROP], events[cut:])
    resume = turn.attempts[1]
    assert resume.kind == "resume"
    assert sink.transitions[-3:-1] == [("tool_call", "streaming", "tool_calls_done"),
                                     ("streaming", "terminal", "completed")]
    assert [(c["name"], c["arguments"], c["status"]) for c in result.tool_calls] == [
        ("lookup", '{"city": "Paris", "days": 3}', "completed")]


def test_a_cut_resume_is_resumed_again_from_its_own_last_sequence_number() -> None:
    events = answer_events(deltas=6)
    turn, sink, result = run([*events[:3], DROP], [*events[3:6], DROP], events[6:])
    assert kinds(result) == [("stream", "drop"), ("resume", "drop"), ("resume", "completed")]
    assert [a.resume_point for a in turn.attempts] == [None, (RESPONSE_ID, 2), (RESPONSE_ID, 5)]
    assert result.output_text == "".join(sink.effects("text_delta")) == "Hello brave new world"


def test_resumes_are_paid_by_the_stream_retry_budget() -> None:
    """With one stream retry and a fallback: the resume is the retry; when it breaks too, the
    fallback follows."""
    events = answer_events()
    policy = TurnPolicy(max_stream_retries=1, fallback=True)
    _, _, result = run([*events[:3], DROP], [*events[3:5], DROP], events, policy=policy)
    assert kinds(result) == [("stream", "drop"), ("resume", "drop"), ("fallback", "completed")]


@pytest.mark.parametrize(
    ("background", "policy"),
    [(False, TurnPolicy(max_stream_retries=2)), (True, TurnPolicy(max_stream_retries=2, resume=False))],
    ids=["not-background", "resume-off"],
)
def test_without_a_resumable_response_the_turn_asks_again(background: bool, policy: TurnPolicy) -> None:
    events = answer_events()
    _, sink, result = run([*events[:4], DROP], events, policy=policy, background=background)
    assert kinds(result) == [("stream", "drop"), ("stream", "completed")]
    assert "".join(sink.effects("text_delta")) == "Hello brave new world"


def test_a_fault_before_the_response_id_asks_again() -> None:
    """No `response.created` yet (or no sequence numbers at all): nothing to resume."""
    events = answer_events()
    _, _, result = run([DROP], events)
    assert kinds(result) == [("stream", "drop"), ("stream", "completed")]
    unnumbered = [{k: v for k, v in e.items() if k != "sequence_number"} for e in events]
    _, _, result = run([*unnumbered[:3], DROP], unnumbered)
    assert kinds(result) == [("stream", "drop"), ("stream", "completed")]


def test_a_refused_resume_falls_back_to_asking_again() -> None:
    events = answer_events()
    _, sink, result = run([*events[:3], DROP], [NOT_FOUND], events)
    assert kinds(result) == [("stream", "drop"), ("resume", "resume_refused:404"),
                             ("stream", "completed")]
    assert result.outcome == "completed"
    assert "".join(sink.effects("text_delta")) == "Hello brave new world"


def test_a_refused_last_resume_hands_over_to_the_fallback_or_ends_the_turn() -> None:
    events = answer_events()
    _, _, result = run([*events[:3], DROP], [NOT_FOUND], events,
                       policy=TurnPolicy(max_stream_retries=1, fallback=True))
    assert kinds(result) == [("stream", "drop"), ("resume", "resume_refused:404"),
                             ("fallback", "completed")]
    _, sink, result = run([*events[:5], DROP], [NOT_FOUND],
                          policy=TurnPolicy(max_stream_retries=1, fallback=False))
    assert result.outcome == "error"
    assert result.error is not None and result.error["status"] == 404
    seen = "".join(sink.effects("text_delta"))
    assert seen and result.output_text == seen  # what the user saw is kept


def test_a_resume_answered_429_is_sent_again_as_a_resume() -> None:
    events = answer_events()
    busy = HttpError(429, None, {"retry-after": "1"})
    turn, sink, result = run([*events[:3], DROP], [busy], events[3:],
                             policy=TurnPolicy(max_stream_retries=1, max_http_retries=2))
    assert kinds(result) == [("stream", "drop"), ("resume", "http_429"), ("resume", "completed")]
    assert turn.attempts[2].resume_point == (RESPONSE_ID, 2)
    assert sink.effects("wait") == [1.0]
    assert result.output_text == "Hello brave new world"


def test_an_interrupt_cancels_the_background_response() -> None:
    events = answer_events()
    _, sink, result = run([*events[:3], Interrupt()])
    assert result.outcome == "interrupted"
    assert sink.effects("cancel") == [RESPONSE_ID]
    _, sink, result = run([*events[:3], DROP], [events[3], Interrupt()])
    assert kinds(result) == [("stream", "drop"), ("resume", "interrupted")]
    assert sink.effects("cancel") == [RESPONSE_ID]


def test_no_cancel_without_a_known_background_response() -> None:
    events = answer_events()
    _, sink, _ = run([Interrupt()])
    assert sink.effects("cancel") == []
    _, sink, _ = run([*events[:3], Interrupt()], background=False)
    assert sink.effects("cancel") == []
    _, sink, _ = run(events)
    assert sink.effects("cancel") == []


def test_an_interrupt_cancels_a_background_response_with_resume_off_too() -> None:
    events = answer_events()
    _, sink, result = run([*events[:3], Interrupt()],
                          policy=TurnPolicy(max_stream_retries=2, resume=False))
    assert result.outcome == "interrupted"
    assert sink.effects("cancel") == [RESPONSE_ID]
