"""A request without `"stream": true` gets what the real API sends: one `application/json` body
holding the final Response object, through the real openai client (`client.responses.create`
without `stream`), from the same scenarios and shapes that stream to a streaming request."""

from __future__ import annotations

import http.client
import time
from typing import Any

import openai
import orjson
import pytest

import engine
from engine.simulator.scenarios import load_fixture, scenario_from_data
from engine.simulator.server import ResponsesSimulator

REQUEST = {"model": "gpt-5", "input": "What is the capital of France?"}


def _client(sim: ResponsesSimulator, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0, **options)


def _raw(sim: ResponsesSimulator, body: dict[str, Any]) -> tuple[int, str, bytes]:
    """POST /v1/responses: status, content-type and body as sent."""
    connection = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=10)
    try:
        connection.request("POST", "/v1/responses", orjson.dumps(body),
                           {"content-type": "application/json"})
        answer = connection.getresponse()
        return answer.status, answer.getheader("content-type") or "", answer.read()
    finally:
        connection.close()


@pytest.mark.parametrize(
    "shape", ["happy_text", "reasoning_then_text", "completed_output_null", "function_call",
              "incomplete_max_output_tokens", "noisy_but_fine"],
)
def test_create_without_stream_returns_the_response_a_stream_ends_with(shape: str) -> None:
    with ResponsesSimulator(load_fixture(shape)) as sim:
        whole = _client(sim).responses.create(**REQUEST)
        streamed = engine.run_turn(_client(sim), dict(REQUEST))
        assert sim.requests[0].body == REQUEST  # no "stream" in the request
    assert isinstance(whole, openai.types.responses.Response)
    assert streamed.response is not None
    assert whole.status == streamed.response["status"]
    assert whole.output_text == streamed.output_text
    assert [item.type for item in whole.output] == [item["type"] for item in streamed.response["output"]]
    calls = [(item.name, item.arguments) for item in whole.output if item.type == "function_call"]
    assert calls == [(call["name"], call["arguments"]) for call in streamed.tool_calls]


def test_the_body_is_json_for_a_plain_request_and_an_event_stream_for_a_streaming_one() -> None:
    with ResponsesSimulator(load_fixture("happy_text")) as sim:
        status, kind, body = _raw(sim, REQUEST)
        assert (status, kind) == (200, "application/json")
        assert orjson.loads(body)["object"] == "response"
        status, kind, body = _raw(sim, {**REQUEST, "stream": False})
        assert (status, kind) == (200, "application/json")
        status, kind, body = _raw(sim, {**REQUEST, "stream": True})
        assert (status, kind) == (200, "text/event-stream; charset=utf-8")
        assert body.startswith(b"event: response.created\n")


@pytest.mark.parametrize("stream", [False, True])
def test_http_errors_are_json_in_both_cases(stream: bool) -> None:
    data = {"reply": [{"nth": 2, "status": 500, "text": "never streamed"},
                      {"status": 429, "headers": {"retry-after": "3"}}]}
    with ResponsesSimulator(scenario_from_data(data)) as sim:
        for expected in (429, 500, 429):
            status, kind, body = _raw(sim, {**REQUEST, "stream": stream})
            assert (status, kind) == (expected, "application/json")
            assert set(orjson.loads(body)["error"]) == {"message", "type", "param", "code"}
        with pytest.raises(openai.RateLimitError) as raised:
            _client(sim).responses.create(**REQUEST, stream=stream)
    assert "try again in 3s" in str(raised.value)


def test_an_error_frame_becomes_an_http_error_with_the_providers_words() -> None:
    with ResponsesSimulator(load_fixture("error_first_nested")) as sim:
        streamed = engine.run_turn(_client(sim), dict(REQUEST))
        with pytest.raises(openai.APIStatusError) as raised:
            _client(sim).responses.create(**REQUEST)
    assert streamed.error is not None
    assert raised.value.status_code == 500
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["message"] == streamed.error["message"]
    assert raised.value.body["code"] == streamed.error["code"]


def test_a_stream_cut_before_its_end_is_a_connection_closed_without_an_answer() -> None:
    with ResponsesSimulator(load_fixture("drop_every_attempt")) as sim:
        with pytest.raises(openai.APIConnectionError):
            _client(sim).responses.create(**REQUEST)


def test_a_stream_ending_without_a_terminal_event_is_a_500() -> None:
    with ResponsesSimulator(load_fixture("eof_then_retry")) as sim:
        with pytest.raises(openai.InternalServerError, match="ended before it was complete"):
            _client(sim).responses.create(**REQUEST)


def test_pauses_before_the_answer_delay_the_status_line() -> None:
    data = {"reply": [{"text": "Paris.", "chunk_delay_ms": 60}]}
    with ResponsesSimulator(scenario_from_data(data)) as sim:
        started = time.monotonic()
        whole = _client(sim).responses.create(**REQUEST)
        took = time.monotonic() - started
    assert whole.output_text == "Paris."
    pauses = 6  # created, in_progress, item added, part added, delta, ... then completed: 7+ events
    assert took >= pauses * 0.06


def test_a_plain_request_starts_no_background_response() -> None:
    data = {"reply": [{"text": "Paris.", "background_drop_after_events": 2}]}
    with ResponsesSimulator(scenario_from_data(data)) as sim:
        whole = _client(sim).responses.create(**REQUEST, background=True)
        assert sim.background_responses == {}
    assert whole.status == "completed" and whole.output_text == "Paris."
