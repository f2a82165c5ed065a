"""Every real-world stream shape (engine.simulator.shapes.SHAPES, DESIGN.md "Real-world stream shapes")
through `engine.run_turn` with the real openai client over loopback HTTP.

The expectations are written out from what each shape's builders were given (the answer text,
the function-call arguments, the provider's error words), never copied from what the engine
returns. A shape whose stream is fine must end in ONE request; only the fault shapes retry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import pytest
from openai.types.responses import Response

import engine
from engine.simulator import shapes
from engine.simulator.shapes import (
    FAILURE_MESSAGES,
    RESPONSE_ID,
    SHAPES,
    function_call,
    output_items,
    rate_limits_frame,
    reasoning_summary,
    split_text,
    text_message,
)

from support import REQUEST, run_over_http

ANSWER = shapes._ANSWER
REASONING = shapes._REASONING
WEATHER_ARGS = shapes._WEATHER_ARGS
TIME_ARGS = shapes._TIME_ARGS
UTF8_ANSWER = shapes._UTF8_ANSWER
ENTITLEMENT = shapes._ENTITLEMENT_MESSAGE
PREAMBLE = shapes._PREAMBLE

#: The first two of four deltas: what a cut-off attempt streamed before it broke.
HALF_ANSWER = "".join(split_text(ANSWER, 4)[:2])

WEATHER_CALL = {"call_id": "call_00_sim", "name": "get_weather", "arguments": WEATHER_ARGS,
                "status": "completed", "type": "function_call"}
TIME_CALL = {"call_id": "call_01_sim", "name": "get_time", "arguments": TIME_ARGS,
             "status": "completed", "type": "function_call"}

#: The other calls the client must execute, as the builders were given them.
PATCH_CALL = {"call_id": "call_00_sim", "name": "apply_patch", "arguments": shapes._PATCH,
              "status": "completed", "type": "custom_tool_call"}
#: Built-in calls: their action or operation as compact JSON with sorted keys.
LOCAL_SHELL_CALL = {
    "call_id": "call_00_sim", "name": "local_shell", "status": "completed",
    "type": "local_shell_call",
    "arguments": '{"command":["ls","-la","src"],"env":{},"timeout_ms":10000,"type":"exec",'
                 '"user":null,"working_directory":"/home/user/project"}',
}
SHELL_CALL = {
    "call_id": "call_00_sim", "name": "shell", "status": "completed", "type": "shell_call",
    "arguments": '{"commands":["git status --short","python -m pytest -q"],'
                 '"max_output_length":4096,"timeout_ms":120000}',
}
APPLY_PATCH_CALL = {
    "call_id": "call_00_sim", "name": "apply_patch", "status": "completed",
    "type": "apply_patch_call",
    "arguments": '{"diff":' + json.dumps(shapes._DIFF) + ',"path":"src/app.py",'
                 '"type":"update_file"}',
}
#: What the dropped custom tool call streamed: two of its four input deltas.
HALF_PATCH = "".join(split_text(shapes._PATCH, 4)[:2])

ONE_GOOD = [("stream", "terminal", "completed")]


@attrs.frozen
class Expected:
    outcome: str
    text: str = ""
    calls: list[dict[str, Any]] = attrs.field(factory=list)
    #: fields the result's error must hold exactly (None: no error at all)
    error: dict[str, Any] | None = None
    attempts: list[tuple[str, str, str]] = attrs.field(factory=lambda: list(ONE_GOOD))
    #: HTTP requests the simulator must have received
    requests: int = 1
    policy: engine.TurnPolicy | None = None
    #: the turn's request asks for a background response (`shapes.BACKGROUND_SHAPES`)
    background: bool = False
    #: the answer without the commentary (None: all of `text`), the commentary, the refusal
    answer: str | None = None
    commentary: list[str] = attrs.field(factory=list)
    refusal: str | None = None


def _terminal(reason: str) -> list[tuple[str, str, str]]:
    return [("stream", "terminal", reason)]


def _failed(code: str) -> dict[str, Any]:
    return {"message": FAILURE_MESSAGES[code], "code": code, "type": "response.failed"}


EXPECTED: dict[str, Expected] = {
    "happy_text": Expected("completed", ANSWER),
    "reasoning_then_text": Expected("completed", ANSWER),
    "function_call": Expected("completed", calls=[WEATHER_CALL]),
    "parallel_function_calls": Expected("completed", calls=[WEATHER_CALL, TIME_CALL]),
    "relay_in_progress_first": Expected("completed", ANSWER),
    "rate_limits_before_created": Expected("completed", ANSWER),
    "error_first_top_level": Expected(
        "error",
        error={"message": ENTITLEMENT, "code": "permission_denied", "type": "error", "param": None},
        attempts=_terminal("error_frame"),
    ),
    "error_first_nested": Expected(
        "error",
        error={
            "message": ENTITLEMENT,
            "code": "permission_denied",
            "type": "permission_error",
            "param": None,
        },
        attempts=_terminal("error_frame"),
    ),
    "completed_output_empty": Expected("completed", ANSWER),
    "completed_output_null": Expected("completed", ANSWER),
    "function_call_without_item_done": Expected("completed", calls=[WEATHER_CALL]),
    "incomplete_max_output_tokens": Expected(
        "incomplete", "The capital of France is Paris. It has", attempts=_terminal("incomplete")
    ),
    "incomplete_content_filter": Expected(
        "incomplete", "Here is how", attempts=_terminal("incomplete")
    ),
    "failed_server_error": Expected(
        "failed", "The capital of", error=_failed("server_error"), attempts=_terminal("failed")
    ),
    "failed_rate_limit_exceeded": Expected(
        "failed", error=_failed("rate_limit_exceeded"), attempts=_terminal("failed")
    ),
    "failed_context_length_exceeded": Expected(
        "failed", error=_failed("context_length_exceeded"), attempts=_terminal("failed")
    ),
    "failed_insufficient_quota": Expected(
        "failed", error=_failed("insufficient_quota"), attempts=_terminal("failed")
    ),
    "noisy_but_fine": Expected("completed", ANSWER),
    "crlf_split_chunks": Expected("completed", UTF8_ANSWER),
    "drop_then_retry": Expected(
        "completed", ANSWER, attempts=[("stream", "retire", "drop"), *ONE_GOOD], requests=2
    ),
    "stall_then_retry": Expected(
        "completed",
        ANSWER,
        attempts=[("stream", "retire", "idle_timeout"), *ONE_GOOD],
        requests=2,
        policy=engine.TurnPolicy(idle_timeout_s=0.3),
    ),
    "eof_then_retry": Expected(
        "completed", ANSWER, attempts=[("stream", "retire", "eof"), *ONE_GOOD], requests=2
    ),
    "http_500": Expected(
        "error",
        error={
            "message": "The server had an error while processing your request. Sorry about that!",
            "code": None,
            "type": "server_error",
            "status": 500,
        },
        attempts=_terminal("http_500"),
    ),
    "http_429": Expected(
        "error",
        error={
            "message": "Rate limit reached for gpt-5 in organization org-simulator on tokens per "
            "min (TPM): Limit 30000, Used 29400, Requested 1850. Please try again in 20s. Visit "
            "https://platform.openai.com/account/rate-limits to learn more.",
            "code": "rate_limit_exceeded",
            "type": "tokens",
            "status": 429,
        },
        attempts=_terminal("http_429"),
    ),
    "http_503_then_ok": Expected(
        "completed",
        ANSWER,
        attempts=[("stream", "retire", "http_503"), ("stream", "retire", "http_503"), *ONE_GOOD],
        requests=3,
        policy=engine.TurnPolicy(max_http_retries=2),
    ),
    "http_401": Expected(
        "error",
        error={
            "message": "Incorrect API key provided: sk-test. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "code": "invalid_api_key",
            "type": "invalid_request_error",
            "status": 401,
        },
        attempts=_terminal("http_401"),
    ),
    "drop_every_attempt": Expected(
        "error",
        HALF_ANSWER,
        error={"code": "drop", "type": "transport_error"},
        attempts=[
            ("stream", "retire", "drop"),
            ("stream", "fallback", "drop"),
            ("fallback", "retire", "drop"),
        ],
        requests=3,
    ),
    "custom_tool_call": Expected("completed", calls=[PATCH_CALL]),
    "custom_tool_call_server_side": Expected("completed", ANSWER),
    "custom_tool_call_dropped": Expected(
        "error",
        calls=[{**PATCH_CALL, "arguments": HALF_PATCH, "status": "incomplete"}],
        error={"code": "drop", "type": "transport_error"},
        attempts=[
            ("stream", "retire", "drop"),
            ("stream", "fallback", "drop"),
            ("fallback", "retire", "drop"),
        ],
        requests=3,
    ),
    "local_shell_call": Expected("completed", calls=[LOCAL_SHELL_CALL]),
    "local_shell_call_with_output": Expected("completed", shapes._LISTED_ANSWER),
    "shell_call": Expected("completed", calls=[SHELL_CALL]),
    "shell_call_hosted": Expected("completed", shapes._HOSTED_ANSWER),
    "apply_patch_call": Expected("completed", calls=[APPLY_PATCH_CALL]),
    "apply_patch_call_with_output": Expected("completed", shapes._PATCHED_ANSWER),
    "background_drop_then_resume": Expected(
        "completed", ANSWER,
        attempts=[("stream", "retire", "drop"), ("resume", "terminal", "completed")],
        requests=2, background=True,
    ),
    "background_drop_before_created": Expected(
        "completed", ANSWER,
        attempts=[("stream", "retire", "drop"), ("stream", "terminal", "completed")],
        requests=2, background=True,
    ),
    "commentary_then_tool_call": Expected(
        "completed", PREAMBLE, calls=[{**WEATHER_CALL, "call_id": "call_01_sim"}], answer="",
        commentary=[PREAMBLE],
    ),
    **{
        name: Expected("completed", PREAMBLE + ANSWER, answer=ANSWER, commentary=[PREAMBLE])
        for name in ("commentary_then_answer", "commentary_phase_only_on_done",
                     "commentary_without_item_added", "commentary_rotating_item_ids",
                     "commentary_completed_output_empty")
    },
    "commentary_drop_then_retry": Expected(
        "completed", PREAMBLE + ANSWER, answer=ANSWER, commentary=[PREAMBLE],
        attempts=[("stream", "retire", "drop"), *ONE_GOOD], requests=2,
    ),
    "refusal": Expected("completed", refusal=shapes._REFUSAL),
    "refusal_after_text": Expected("completed", shapes._BEGUN_ANSWER, refusal=shapes._REFUSAL),
}


def test_every_shape_has_an_expectation() -> None:
    assert sorted(EXPECTED) == sorted(SHAPES)
    assert {name for name, e in EXPECTED.items() if e.background} == shapes.BACKGROUND_SHAPES


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shape_over_http(name: str, tmp_path: Path) -> None:
    expected = EXPECTED[name]
    request = {**REQUEST, "background": True} if expected.background else REQUEST
    run = run_over_http(SHAPES[name], tmp_path, policy=expected.policy, request=request)
    result = run.result

    assert result.outcome == expected.outcome
    assert result.output_text == expected.text
    assert result.answer_text == (expected.text if expected.answer is None else expected.answer)
    assert result.commentary == expected.commentary
    assert result.refusal == expected.refusal
    assert result.tool_calls == expected.calls
    if expected.error is None:
        assert result.error is None
    else:
        assert result.error is not None
        assert {key: result.error.get(key) for key in expected.error} == expected.error
        assert {"message", "code", "type"} <= set(result.error)
    assert run.attempts == expected.attempts
    assert len(run.requests) == expected.requests
    for sent in run.requests:
        if sent.method == "GET":  # a resume
            assert sent.path.startswith("/v1/responses/resp_") and "starting_after=" in sent.query
            continue
        assert sent.path == "/v1/responses"
        assert sent.body == {**request, "stream": True}


def test_terminal_response_is_the_servers_and_parses_as_an_sdk_response(tmp_path: Path) -> None:
    run = run_over_http(SHAPES["reasoning_then_text"], tmp_path)
    response = run.result.response
    assert response is not None
    assert response["id"] == RESPONSE_ID
    assert response["status"] == "completed"
    reasoning = reasoning_summary(REASONING, deltas=3, output_index=0)
    answer = text_message(ANSWER, deltas=3, output_index=1)
    assert response["output"] == output_items(reasoning, answer)
    # the SDK's own Response agrees on the answer text
    assert Response.model_validate(response).output_text == run.result.output_text == ANSWER


# -- prelude shapes: absorbed in the same request ---------------------------------------------------


def _stream_path(result: engine.TurnResult) -> list[tuple[str, str, str]]:
    return [(t.source, t.dest, t.trigger) for t in result.transitions if t.machine == "stream_attempt"]


def test_in_progress_first_starts_the_answer_in_one_request(tmp_path: Path) -> None:
    run = run_over_http(SHAPES["relay_in_progress_first"], tmp_path)
    assert len(run.requests) == 1
    assert _stream_path(run.result) == [
        ("awaiting_created", "streaming", "in_progress"),
        ("streaming", "terminal", "completed"),
    ]
    assert run.result.output_text == ANSWER


def test_rate_limits_before_created_are_kept_in_one_request(tmp_path: Path) -> None:
    run = run_over_http(SHAPES["rate_limits_before_created"], tmp_path)
    assert len(run.requests) == 1
    assert run.result.rate_limits == rate_limits_frame()
    assert run.result.rate_limits[0]["rate_limits"]["primary"]["used_percent"] == 12.0
    assert _stream_path(run.result) == [
        ("awaiting_created", "streaming", "created"),
        ("streaming", "terminal", "completed"),
    ]
    assert run.result.outcome == "completed"


@pytest.mark.parametrize("name", ["error_first_top_level", "error_first_nested"])
def test_error_frame_first_ends_the_turn_in_one_request_with_the_providers_words(
    name: str, tmp_path: Path
) -> None:
    run = run_over_http(SHAPES[name], tmp_path)
    assert len(run.requests) == 1
    assert _stream_path(run.result) == [("awaiting_created", "terminal", "error_frame")]
    assert run.result.error is not None
    assert run.result.error["message"] == ENTITLEMENT
    assert run.result.error["code"] == "permission_denied"
    assert run.result.response is None


# -- output rebuilt when the server leaves it out -------------------------------------------------


@pytest.mark.parametrize("name", ["completed_output_empty", "completed_output_null"])
def test_empty_or_null_output_is_backfilled_from_the_done_items(name: str, tmp_path: Path) -> None:
    run = run_over_http(SHAPES[name], tmp_path)
    reasoning = reasoning_summary(REASONING, deltas=2, output_index=0)
    answer = text_message(ANSWER, deltas=3, output_index=1)
    assert run.result.response is not None
    assert run.result.response["status"] == "completed"
    assert run.result.response["output"] == output_items(reasoning, answer)
    assert Response.model_validate(run.result.response).output_text == ANSWER


def test_function_call_without_item_done_is_rebuilt_from_its_deltas(tmp_path: Path) -> None:
    run = run_over_http(SHAPES["function_call_without_item_done"], tmp_path)
    announced = function_call("get_weather", WEATHER_ARGS, deltas=3, finished=False)[0]["item"]
    assert run.result.response is not None
    [item] = run.result.response["output"]
    assert item["type"] == "function_call"
    assert (item["id"], item["call_id"], item["name"]) == (
        announced["id"],
        announced["call_id"],
        announced["name"],
    )
    assert item["arguments"] == WEATHER_ARGS


def test_incomplete_keeps_the_servers_reason(tmp_path: Path) -> None:
    run = run_over_http(SHAPES["incomplete_max_output_tokens"], tmp_path)
    assert run.result.response is not None
    assert run.result.response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert run.result.error is None


def test_noisy_stream_ignores_noise_without_losing_text(tmp_path: Path) -> None:
    deltas: list[str] = []
    run = run_over_http(
        SHAPES["noisy_but_fine"], tmp_path, callbacks=engine.Callbacks(on_text_delta=deltas.append)
    )
    assert deltas == split_text(ANSWER, 4)
    assert len(run.requests) == 1


# -- calls besides function calls ------------------------------------------------------------------

#: Shapes whose server ran every call it reported: the answer after them reaches the callbacks.
SERVER_EXECUTED = ["custom_tool_call_server_side", "local_shell_call_with_output",
                   "shell_call_hosted", "apply_patch_call_with_output"]


@pytest.mark.parametrize("name", SERVER_EXECUTED)
def test_calls_the_server_ran_are_not_listed_and_hide_no_text(name: str, tmp_path: Path) -> None:
    deltas: list[str] = []
    run = run_over_http(
        SHAPES[name], tmp_path, callbacks=engine.Callbacks(on_text_delta=deltas.append)
    )
    assert run.result.tool_calls == []
    assert "".join(deltas) == run.result.output_text == EXPECTED[name].text
    assert run.result.response is not None
    assert Response.model_validate(run.result.response).output_text == run.result.output_text


@pytest.mark.parametrize("name", ["shell_call_hosted", "apply_patch_call_with_output",
                                  "local_shell_call_with_output"])
def test_a_hosted_call_is_withdrawn_when_its_output_arrives(name: str, tmp_path: Path) -> None:
    run = run_over_http(SHAPES[name], tmp_path)
    assert _stream_path(run.result) == [
        ("awaiting_created", "streaming", "created"),
        ("streaming", "tool_call", "tool_call_started"),
        ("tool_call", "streaming", "tool_calls_done"),
        ("streaming", "streaming", "tool_call_withdrawn"),
        ("streaming", "terminal", "completed"),
    ]


def test_undeclared_custom_tool_calls_never_enter_the_tool_call_state(tmp_path: Path) -> None:
    run = run_over_http(SHAPES["custom_tool_call_server_side"], tmp_path)
    assert _stream_path(run.result) == [
        ("awaiting_created", "streaming", "created"),
        ("streaming", "terminal", "completed"),
    ]
    output = run.result.response["output"] if run.result.response else []
    assert [item["type"] for item in output] == ["custom_tool_call", "custom_tool_call", "message"]


@pytest.mark.parametrize("name", ["custom_tool_call", "local_shell_call", "shell_call",
                                  "apply_patch_call"])
def test_client_calls_go_through_the_tool_call_state(name: str, tmp_path: Path) -> None:
    run = run_over_http(SHAPES[name], tmp_path)
    assert _stream_path(run.result) == [
        ("awaiting_created", "streaming", "created"),
        ("streaming", "tool_call", "tool_call_started"),
        ("tool_call", "streaming", "tool_calls_done"),
        ("streaming", "terminal", "completed"),
    ]
    [call] = run.result.tool_calls
    if call["type"] != "custom_tool_call":  # a built-in call's action or operation, as JSON
        assert isinstance(json.loads(call["arguments"]), dict)
