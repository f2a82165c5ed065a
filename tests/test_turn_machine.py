"""The turn machine fed attempt by attempt, its decisions kept in a list: which attempts it opens under
each policy, its own transitions, and the outcome it builds from the last attempt."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from engine.simulator.shapes import (
    completed,
    created,
    failed,
    function_call,
    incomplete,
    output_items,
    rate_limits_frame,
    text_message,
)
from machines.records import (
    EndOfStream,
    HttpError,
    Interrupt,
    MachineInput,
    TransportFault,
    TurnPolicy,
    TurnResult,
)
from machines.turn import TurnMachine

from support import Decisions, sse

DROP = TransportFault("drop", "RemoteProtocolError")


def run(
    policy: TurnPolicy, *attempts: list[Any], background: bool = False
) -> tuple[TurnMachine, Decisions, TurnResult]:
    """Feed each list of inputs to the next attempt the turn opens, until each is final; keep
    every decision, the turn's and the attempts', in order."""
    sink = Decisions()
    turn = TurnMachine(policy, background=background)
    scripted = list(attempts)
    while True:
        attempt, decisions = turn.next_attempt()
        sink.take(decisions)
        if attempt is None:
            break
        assert scripted, f"the turn opened attempt {attempt.number} but the test has no inputs for it"
        for item in scripted.pop(0):
            for one in item if isinstance(item, list) else [item]:
                sink.take(attempt.receive(sse(one) if isinstance(one, dict) else one))
            if attempt.is_final:
                break
    assert not scripted, "the turn ended before using every scripted attempt"
    return turn, sink, turn.result(sink.transition_records)


def answer(text: str) -> list[Any]:
    message = text_message(text, deltas=2)
    return [created(), message, completed(output_items(message))]


def partial(text: str, fault: MachineInput = DROP) -> list[Any]:
    return [created(), text_message(text, deltas=2, finished=False), fault]


def turn_path(result: TurnResult) -> list[tuple[str, str, str]]:
    return [(t.source, t.dest, t.trigger) for t in result.transitions if t.machine == "turn"]


def summary(result: TurnResult) -> list[tuple[str, str, str]]:
    return [(a.kind, a.final_state, a.reason) for a in result.attempts]


def test_one_good_attempt() -> None:
    turn, sink, result = run(TurnPolicy(), answer("Hello"))
    assert turn_path(result) == [
        ("idle", "stream_attempt", "begin"),
        ("stream_attempt", "finished", "finish"),
    ]
    assert (result.outcome, result.output_text, result.error) == ("completed", "Hello", None)
    assert summary(result) == [("stream", "terminal", "completed")]
    # the turn's transitions are numbered in the sink's order, attempts' ones included
    assert [t.seq for t in result.transitions] == sorted(t.seq for t in result.transitions)
    assert [t.attempt for t in result.transitions if t.machine == "turn"] == [1, 1]


def test_retry_after_a_fault() -> None:
    turn, _, result = run(TurnPolicy(), partial("Hel"), answer("Hello"))
    assert turn_path(result) == [
        ("idle", "stream_attempt", "begin"),
        ("stream_attempt", "stream_attempt", "retry"),
        ("stream_attempt", "finished", "finish"),
    ]
    assert result.output_text == "Hello"
    assert [t.attempt for t in result.transitions if t.machine == "turn"] == [1, 2, 2]


def test_faults_exhaust_streams_then_the_fallback() -> None:
    turn, sink, result = run(TurnPolicy(), partial("Hi"), partial("Hi"), partial("Hi the"))
    assert turn_path(result) == [
        ("idle", "stream_attempt", "begin"),
        ("stream_attempt", "stream_attempt", "retry"),
        ("stream_attempt", "fallback_attempt", "fall_back"),
        ("fallback_attempt", "finished", "finish"),
    ]
    assert summary(result) == [
        ("stream", "retire", "drop"),
        ("stream", "fallback", "drop"),
        ("fallback", "retire", "drop"),
    ]
    assert result.outcome == "error"
    assert result.error == {
        "message": "the connection was lost before the response ended",
        "code": "drop",
        "type": "transport_error",
    }
    assert result.output_text == "Hi the"  # the latest attempt that streamed anything
    assert sink.effects("error") == [result.error]


@pytest.mark.parametrize(
    ("policy", "count", "kinds"),
    [
        (TurnPolicy(max_stream_retries=0, fallback=False), 1, ["stream"]),
        (TurnPolicy(max_stream_retries=0, fallback=True), 2, ["stream", "fallback"]),
        (TurnPolicy(max_stream_retries=3, fallback=False), 4, ["stream"] * 4),
        (TurnPolicy(max_stream_retries=3, fallback=True), 5, ["stream"] * 4 + ["fallback"]),
    ],
)
def test_policy_bounds_the_attempts(policy: TurnPolicy, count: int, kinds: list[str]) -> None:
    _, _, result = run(policy, *[[EndOfStream()]] * count)
    assert [a.kind for a in result.attempts] == kinds
    assert result.attempts[-1].reason == "eof"
    assert result.outcome == "error"


def test_output_survives_a_later_attempt_that_streamed_nothing() -> None:
    connect = TransportFault("connect_error", "ConnectError")
    _, _, result = run(TurnPolicy(max_http_retries=1), partial("Half an ans"), [connect], [connect])
    assert result.output_text == "Half an ans"
    assert result.error is not None and result.error["code"] == "connect_error"
    assert summary(result) == [
        ("stream", "retire", "drop"),
        ("stream", "retire", "connect_error"),  # paid by the HTTP retry budget
        ("stream", "retire", "connect_error"),  # budget spent: no fallback
    ]


def test_two_attempts_are_never_mixed() -> None:
    _, _, result = run(TurnPolicy(fallback=False), partial("First words"), partial("Other words, longer"))
    assert result.output_text == "Other words, longer"


def test_the_result_never_holds_less_text_than_the_user_saw() -> None:
    heard = partial("Hello world, the answer is 4")
    _, sink, result = run(TurnPolicy(fallback=False), heard, partial("Hello "))
    assert "".join(sink.effects("text_delta")) == "Hello world, the answer is 4"
    assert result.outcome == "error"
    assert result.output_text == "Hello world, the answer is 4"


def test_interrupt_is_not_retried() -> None:
    turn, _, result = run(TurnPolicy(max_stream_retries=5), partial("Par", Interrupt()))
    assert result.outcome == "interrupted"
    assert result.error is None
    assert result.output_text == "Par"
    assert summary(result) == [("stream", "retire", "interrupted")]
    assert turn_path(result)[-1] == ("stream_attempt", "finished", "finish")


@pytest.mark.parametrize(
    ("final", "outcome"),
    [
        ([created(), completed([])], "completed"),
        ([created(), incomplete("content_filter")], "incomplete"),
        ([created(), failed("insufficient_quota")], "failed"),
        ([{"type": "error", "message": "m", "code": "c"}], "error"),
        ([HttpError(401, {"error": {"message": "bad key", "code": "invalid_api_key", "type": "x"}})], "error"),
    ],
)
def test_terminal_outcomes_are_not_retried(final: list[Any], outcome: str) -> None:
    _, _, result = run(TurnPolicy(max_stream_retries=3), final)
    assert result.outcome == outcome
    assert len(result.attempts) == 1


def test_failed_with_a_retryable_code_is_retried() -> None:
    policy = TurnPolicy(retry_failed_codes={"server_error"})
    turn, _, result = run(policy, [created(), failed("server_error")], answer("Recovered"))
    assert summary(result) == [
        ("stream", "retire", "failed:server_error"),
        ("stream", "terminal", "completed"),
    ]
    assert result.outcome == "completed" and result.output_text == "Recovered"


def test_failed_with_a_retryable_code_on_every_attempt_keeps_the_providers_words() -> None:
    policy = TurnPolicy(retry_failed_codes={"server_error"})
    failure = [created(), failed("server_error", "The server had an error. Retry later.")]
    _, sink, result = run(policy, failure, failure, failure)
    assert summary(result) == [
        ("stream", "retire", "failed:server_error"),
        ("stream", "fallback", "failed:server_error"),
        ("fallback", "retire", "failed:server_error"),
    ]
    assert result.outcome == "failed"
    assert result.error == {
        "code": "server_error",
        "message": "The server had an error. Retry later.",
        "type": "response.failed",
    }
    assert result.response is not None and result.response["status"] == "failed"
    assert sink.effects("error") == [result.error]


def test_tool_calls_merge_the_servers_output_and_unfinished_streamed_calls() -> None:
    done = function_call("get_weather", '{"city":"Paris"}', output_index=0)
    unfinished = function_call("get_time", '{"tz":"CET"}', output_index=1, finished=False)
    _, sink, result = run(TurnPolicy(), [created(), done, unfinished, completed(output_items(done))])
    assert result.tool_calls == [
        {"call_id": "call_00_sim", "name": "get_weather", "arguments": '{"city":"Paris"}',
         "status": "completed", "type": "function_call"},
        {"call_id": "call_01_sim", "name": "get_time", "arguments": '{"tz":"CET"}',
         "status": "completed", "type": "function_call"},  # the response completed
    ]
    assert sink.effects("tool_call") == result.tool_calls


def test_a_call_cut_off_by_a_broken_stream_is_incomplete() -> None:
    done = function_call("get_weather", '{"city":"Paris"}', output_index=0)
    cut = function_call("get_time", '{"tz":"CE', output_index=1, finished=False)
    _, _, result = run(TurnPolicy(max_stream_retries=0, fallback=False),
                       [created(), done, cut, DROP])
    assert result.outcome == "error"
    assert [(c["name"], c["status"]) for c in result.tool_calls] == [
        ("get_weather", "completed"), ("get_time", "incomplete"),
    ]


# -- HTTP-level retries ---------------------------------------------------------------------------


def test_retryable_statuses_are_retried_on_their_own_budget_after_the_demanded_wait() -> None:
    busy = HttpError(503, None, {"retry-after-ms": "250"})
    limited = HttpError(429, {"error": {"message": "Please try again in 1.5s.", "code": "rate_limit_exceeded"}})
    turn, sink, result = run(TurnPolicy(max_http_retries=2, max_stream_retries=0, fallback=False),
                             [busy], [limited], answer("Hi"))
    assert result.outcome == "completed" and result.output_text == "Hi"
    assert summary(result) == [
        ("stream", "retire", "http_503"), ("stream", "retire", "http_429"),
        ("stream", "terminal", "completed"),
    ]
    assert sink.effects("wait") == [0.25, 1.5]
    assert [t for _, _, t in turn_path(result)] == ["begin", "http_retry", "http_retry", "finish"]


def test_without_a_demanded_wait_the_backoff_doubles_with_seeded_jitter() -> None:
    policy = TurnPolicy(max_http_retries=5, max_stream_retries=0, fallback=False)
    error = HttpError(500)
    waits = []
    for seed in (1, 1, 2):
        turn = TurnMachine(policy, seed)
        sink = Decisions()
        while True:
            attempt, decisions = turn.next_attempt()
            sink.take(decisions)
            if attempt is None:
                break
            attempt.receive(error)
        waits.append(sink.effects("wait"))
    assert waits[0] == waits[1] != waits[2]  # the seed decides the jitter
    for got in waits:
        for n, wait in enumerate(got):
            ceiling = min(8.0, 0.5 * 2**n)
            assert ceiling / 2 <= wait <= ceiling


def test_a_spent_http_budget_ends_the_turn_with_the_last_http_error() -> None:
    error = HttpError(500, {"error": {"message": "boom", "type": "server_error", "code": None}})
    _, _, result = run(TurnPolicy(max_http_retries=1), [error], [error])
    assert summary(result) == [("stream", "retire", "http_500"), ("stream", "terminal", "http_500")]
    assert result.outcome == "error" and result.error["message"] == "boom"


def test_a_demanded_wait_longer_than_allowed_ends_the_turn_at_once() -> None:
    error = HttpError(429, None, {"retry-after": "120"})
    _, sink, result = run(TurnPolicy(max_http_retries=3, max_retry_wait_s=60.0), [error])
    assert summary(result) == [("stream", "terminal", "http_429")]
    assert sink.effects("wait") == []


def test_statuses_that_are_not_worth_retrying_are_outcomes() -> None:
    for status in (400, 401, 403, 404, 422):
        _, _, result = run(TurnPolicy(max_http_retries=3), [HttpError(status)])
        assert summary(result) == [("stream", "terminal", f"http_{status}")]


def test_an_http_retry_of_the_fallback_stays_a_fallback_attempt() -> None:
    policy = TurnPolicy(max_stream_retries=0, max_http_retries=1)
    _, _, result = run(policy, partial("a"), [HttpError(502)], answer("ab"))
    assert summary(result) == [
        ("stream", "fallback", "drop"), ("fallback", "retire", "http_502"),
        ("fallback", "terminal", "completed"),
    ]


def test_rate_limits_from_every_attempt_are_kept_in_order() -> None:
    first = rate_limits_frame(used_percent=10.0)
    second = rate_limits_frame(used_percent=20.0)
    _, _, result = run(TurnPolicy(), [*first, EndOfStream()], [*second, *answer("ok")])
    assert result.rate_limits == first + second


def test_driving_out_of_order_is_refused() -> None:
    turn = TurnMachine(TurnPolicy())
    with pytest.raises(RuntimeError, match="has not finished"):
        turn.result([])
    attempt, _ = turn.next_attempt()
    assert attempt is not None and attempt.number == 1
    with pytest.raises(RuntimeError, match="has not ended"):
        turn.next_attempt()
    attempt.receive(EndOfStream())
    assert turn.next_attempt()[0] is not None  # the retry


def test_next_attempt_after_finish_stays_none() -> None:
    turn = TurnMachine(TurnPolicy(max_stream_retries=0, fallback=False))
    attempt, _ = turn.next_attempt()
    assert attempt is not None
    attempt.receive(Interrupt())
    assert turn.next_attempt()[0] is None
    assert turn.next_attempt() == (None, [])
    assert turn.result([]).outcome == "interrupted"


def test_a_turn_with_a_fallback_logs_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    """Asking the turn machine for the next attempt never fires a trigger its state cannot take
    (the `transitions` library logs each such call as a WARNING in the user's logs)."""
    with caplog.at_level(logging.DEBUG):
        run(TurnPolicy(), partial("a"), partial("a"), partial("a"))
        run(TurnPolicy(), partial("a"), partial("a"), answer("ab"))
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_arguments_finished_before_the_announcement_still_finish_the_call() -> None:
    """Events that race ahead of `output_item.added` are all kept, `arguments.done` included."""
    done_first = {"type": "response.function_call_arguments.done", "item_id": "fc_00_sim",
                  "output_index": 0, "arguments": '{"city":"Paris"}'}
    call = function_call("get_weather", '{"city":"Paris"}', output_index=0, finished=False)
    _, _, result = run(TurnPolicy(max_stream_retries=0, fallback=False),
                       [created(), done_first, call[0], DROP])
    assert [(c["arguments"], c["status"]) for c in result.tool_calls] == [
        ('{"city":"Paris"}', "completed"),
    ]
