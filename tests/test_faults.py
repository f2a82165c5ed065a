"""Transport faults, HTTP error statuses and the retry policy, with the real openai client over
loopback HTTP: what is retried, what falls back, what ends the turn, and with which words."""

from __future__ import annotations

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
from machines.records import Stall, TransportFault

from support import REQUEST, assert_replays_identically, closed_port, run_over_http, within

ANSWER = shapes._ANSWER
HALF_ANSWER = "".join(split_text(ANSWER, 4)[:2])
SINGLE_ATTEMPT = engine.TurnPolicy(max_stream_retries=0, fallback=False)
DROP_MESSAGE = "the connection was lost before the response ended"


def _happy() -> Reply:
    message = text_message(ANSWER, deltas=4)
    return to_reply(assemble(created(), in_progress(), message, completed(output_items(message))))


def _half_then(*fault: Stall | TransportFault) -> Reply:
    """created, in_progress and two of four answer deltas, then `fault`."""
    start = text_message(ANSWER, deltas=4, finished=False)[:4]
    return to_reply([*assemble(created(), in_progress(), start), *fault])


def _script(*replies: Reply) -> Script:
    return Script(replies=replies)


def _turn_path(result: engine.TurnResult) -> list[str]:
    return [t.trigger for t in result.transitions if t.machine == "turn"]


# -- drops --------------------------------------------------------------------------------------


def test_drop_mid_stream_is_retried_and_the_retry_answers(tmp_path: Path) -> None:
    run = run_over_http(_script(_half_then(TransportFault("drop")), _happy()), tmp_path)
    assert run.result.outcome == "completed"
    assert run.result.output_text == ANSWER
    assert run.result.error is None
    assert run.attempts == [("stream", "retire", "drop"), ("stream", "terminal", "completed")]
    assert _turn_path(run.result) == ["begin", "retry", "finish"]
    assert len(run.requests) == 2


def test_drop_on_every_attempt_goes_stream_stream_fallback_then_error_with_partial_text(
    tmp_path: Path,
) -> None:
    dropped = _half_then(TransportFault("drop"))
    run = run_over_http(_script(dropped, dropped, dropped, _happy()), tmp_path)
    assert run.result.outcome == "error"
    assert run.result.output_text == HALF_ANSWER
    assert run.result.error == {"message": DROP_MESSAGE, "code": "drop", "type": "transport_error"}
    assert run.result.response is None
    assert run.attempts == [
        ("stream", "retire", "drop"),
        ("stream", "fallback", "drop"),
        ("fallback", "retire", "drop"),
    ]
    assert _turn_path(run.result) == ["begin", "retry", "fall_back", "finish"]
    assert len(run.requests) == 3  # the fourth (good) reply is never asked for
    assert all(sent.body == {**REQUEST, "stream": True} for sent in run.requests)


def test_fallback_attempt_can_complete_the_turn(tmp_path: Path) -> None:
    dropped = _half_then(TransportFault("drop"))
    run = run_over_http(_script(dropped, dropped, _happy()), tmp_path)
    assert run.result.outcome == "completed"
    assert run.result.output_text == ANSWER
    assert run.attempts == [
        ("stream", "retire", "drop"),
        ("stream", "fallback", "drop"),
        ("fallback", "terminal", "completed"),
    ]
    assert len(run.requests) == 3


def test_http_error_on_the_fallback_ends_the_turn_with_its_words(tmp_path: Path) -> None:
    dropped = _half_then(TransportFault("drop"))
    overloaded = shapes.http_error(
        503, "The engine is currently overloaded, please try again later.",
        type="server_error", code="overloaded",
    )
    run = run_over_http(_script(dropped, dropped, overloaded), tmp_path)
    assert run.result.outcome == "error"
    assert run.result.error is not None
    assert run.result.error["message"] == "The engine is currently overloaded, please try again later."
    assert run.result.error["code"] == "overloaded"
    assert run.result.error["status"] == 503
    assert run.attempts[-1] == ("fallback", "terminal", "http_503")
    # the error ends the turn; the partial text streamed before it is kept
    assert run.result.output_text == HALF_ANSWER


# -- the policy decides how many attempts ---------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "attempts"),
    [
        (SINGLE_ATTEMPT, [("stream", "retire", "drop")]),
        (
            engine.TurnPolicy(max_stream_retries=0, fallback=True),
            [("stream", "fallback", "drop"), ("fallback", "retire", "drop")],
        ),
        (
            engine.TurnPolicy(max_stream_retries=2, fallback=False),
            [("stream", "retire", "drop")] * 3,
        ),
        (
            engine.TurnPolicy(max_stream_retries=2, fallback=True),
            [("stream", "retire", "drop")] * 2
            + [("stream", "fallback", "drop"), ("fallback", "retire", "drop")],
        ),
    ],
    ids=["single", "no-retry-fallback", "three-streams", "three-streams-fallback"],
)
def test_policy_sets_the_number_of_attempts(
    policy: engine.TurnPolicy, attempts: list[tuple[str, str, str]], tmp_path: Path
) -> None:
    dropped = _half_then(TransportFault("drop"))
    run = run_over_http(_script(*[dropped] * 5), tmp_path, policy=policy)
    assert run.attempts == attempts
    assert len(run.requests) == len(attempts)
    assert run.result.outcome == "error"
    assert run.result.output_text == HALF_ANSWER


# -- timeouts and connection errors -------------------------------------------------------------


def test_client_read_timeout_is_a_read_timeout_fault_and_is_retried(tmp_path: Path) -> None:
    run = run_over_http(
        _script(_half_then(Stall(within(1.5))), _happy()),
        tmp_path,
        client_options={"timeout": openai.Timeout(5.0, read=0.3)},
    )
    assert run.attempts == [
        ("stream", "retire", "read_timeout"),
        ("stream", "terminal", "completed"),
    ]
    assert run.result.output_text == ANSWER
    assert run.elapsed < within(1.3, before=within(1.5))  # the read timeout, not the stall, ended attempt 1


def test_read_timeout_on_the_only_attempt_keeps_the_partial_text(tmp_path: Path) -> None:
    run = run_over_http(
        _script(_half_then(Stall(1.5))),
        tmp_path,
        policy=SINGLE_ATTEMPT,
        client_options={"timeout": openai.Timeout(5.0, read=0.3)},
    )
    assert run.result.outcome == "error"
    assert run.result.error == {
        "message": "reading the stream timed out",
        "code": "read_timeout",
        "type": "transport_error",
    }
    assert run.result.output_text == HALF_ANSWER
    assert run.attempts == [("stream", "retire", "read_timeout")]


def test_connect_error_on_a_closed_port(tmp_path: Path) -> None:
    """No response at all is an HTTP-level failure: retried on the HTTP budget (the client's own
    max_retries by default), then the turn ends, with no stream retry and no fallback."""
    port = closed_port()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-x", max_retries=2)
    trace = tmp_path / "connect.jsonl"
    with client:
        result = engine.run_turn(client, REQUEST, trace=trace)
    assert result.outcome == "error"
    assert result.error == {
        "message": "could not connect to the server",
        "code": "connect_error",
        "type": "transport_error",
    }
    assert [(a.kind, a.final_state, a.reason) for a in result.attempts] == [
        ("stream", "retire", "connect_error"),
        ("stream", "retire", "connect_error"),
        ("stream", "retire", "connect_error"),
    ]
    assert result.output_text == ""
    assert result.response is None
    assert_replays_identically(trace)


# -- the body ends without a terminal event ---------------------------------------------------


def test_clean_eof_without_terminal_is_retried(tmp_path: Path) -> None:
    run = run_over_http(SHAPES["eof_then_retry"], tmp_path)
    assert run.attempts == [("stream", "retire", "eof"), ("stream", "terminal", "completed")]
    assert run.result.output_text == ANSWER


def test_clean_eof_on_the_only_attempt_is_an_error_keeping_partial_text(tmp_path: Path) -> None:
    run = run_over_http(SHAPES["eof_then_retry"], tmp_path, policy=SINGLE_ATTEMPT)
    assert run.result.outcome == "error"
    assert run.result.error == {
        "message": "the stream ended without a terminal event",
        "code": "eof",
        "type": "transport_error",
    }
    assert run.result.output_text == HALF_ANSWER
    assert len(run.requests) == 1


@pytest.mark.parametrize(
    "reply",
    [
        Reply(steps=()),
        to_reply([shapes.Raw(b"<html><body>upstream says hi</body></html>")]),
        to_reply([shapes.Data("not json"), shapes.DONE]),
    ],
    ids=["empty-body", "html-body", "no-json"],
)
def test_a_200_body_without_events_is_an_eof_fault(reply: Reply, tmp_path: Path) -> None:
    run = run_over_http(_script(reply), tmp_path, policy=SINGLE_ATTEMPT)
    assert run.result.outcome == "error"
    assert run.result.error is not None and run.result.error["code"] == "eof"
    assert run.attempts == [("stream", "retire", "eof")]


# -- HTTP error statuses: outcomes with the server's own words, never retried ------------------


@pytest.mark.parametrize(
    ("name", "status", "words", "code"),
    [
        ("http_500", 500, "The server had an error while processing your request.", None),
        ("http_429", 429, "Please try again in 20s.", "rate_limit_exceeded"),
        ("http_401", 401, "Incorrect API key provided", "invalid_api_key"),
    ],
)
def test_http_error_status_is_an_error_outcome_with_the_bodys_words(
    name: str, status: int, words: str, code: str | None, tmp_path: Path
) -> None:
    run = run_over_http(SHAPES[name], tmp_path)
    error = run.result.error
    assert run.result.outcome == "error"
    assert error is not None
    assert words in error["message"]
    assert error["code"] == code
    assert error["status"] == status
    assert run.attempts == [("stream", "terminal", f"http_{status}")]
    assert len(run.requests) == 1  # the script holds three replies: none is asked for again


def test_http_error_with_a_non_json_body_keeps_the_body_text(tmp_path: Path) -> None:
    body = b"<html><head><title>502 Bad Gateway</title></head></html>"
    reply = Reply(status=502, body=body, headers=(("content-type", "text/html"),))
    run = run_over_http(_script(reply), tmp_path)
    assert run.result.outcome == "error"
    assert run.result.error == {
        "message": body.decode(),
        "code": None,
        "type": "http_error",
        "status": 502,
    }


# -- policy validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"max_stream_retries": -1}, ValueError, "max_stream_retries must be a whole number >= 0"),
        ({"max_stream_retries": 1.5}, ValueError, "max_stream_retries must be a whole number >= 0"),
        ({"max_stream_retries": True}, ValueError, "max_stream_retries must be a whole number >= 0"),
        ({"max_stream_retries": "2"}, ValueError, "max_stream_retries must be a whole number >= 0"),
        ({"idle_timeout_s": 0}, ValueError, "idle_timeout_s must be None or a number of seconds > 0"),
        ({"idle_timeout_s": -0.5}, ValueError, "idle_timeout_s must be None or a number of seconds > 0"),
        ({"idle_timeout_s": "1"}, ValueError, "idle_timeout_s must be None or a number of seconds > 0"),
        ({"idle_timeout_s": True}, ValueError, "idle_timeout_s must be None or a number of seconds > 0"),
        ({"fallback": "yes"}, TypeError, "fallback"),
        ({"fallback": None}, TypeError, "fallback"),
        ({"max_http_retries": -1}, ValueError, "max_http_retries must be a whole number >= 0"),
        ({"max_http_retries": 1.5}, ValueError, "max_http_retries must be a whole number >= 0"),
        ({"max_retry_wait_s": 0}, ValueError, "max_retry_wait_s must be"),
        ({"max_retry_wait_s": None}, ValueError, "max_retry_wait_s must be"),
        ({"max_event_bytes": 0}, ValueError, "max_event_bytes must be a whole number >= 1"),
        ({"max_event_bytes": "1"}, ValueError, "max_event_bytes must be a whole number >= 1"),
        ({"resume": 1}, TypeError, "resume"),
        ({"retry_failed_codes": "server_error"}, TypeError, "not one string"),
        ({"retry_failed_codes": [1]}, TypeError, "must hold strings"),
    ],
)
def test_policy_validation(options: dict[str, object], error: type[Exception], words: str) -> None:
    with pytest.raises(error) as caught:
        engine.TurnPolicy(**options)  # type: ignore[arg-type]
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)


def test_policy_defaults_match_the_contract() -> None:
    policy = engine.TurnPolicy()
    assert (policy.max_stream_retries, policy.fallback, policy.idle_timeout_s) == (1, True, None)
    assert policy.retry_failed_codes == frozenset()
    assert engine.TurnPolicy(idle_timeout_s=1).idle_timeout_s == 1
    assert (policy.max_http_retries, policy.max_retry_wait_s) == (None, 60.0)
    assert (policy.max_event_bytes, policy.resume) == (64 * 2**20, True)
