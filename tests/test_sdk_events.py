"""engine.compat.sdk_events: SDK-level events become the same inputs as raw bytes (one normalisation)."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any, Iterable

import httpx2
import openai
import orjson
import pytest
from openai._models import construct_type
from openai.types.responses import Response, ResponseStreamEvent

from engine.drivers.consume import SINGLE_ATTEMPT
from engine.drivers.recording import TurnRecording
from engine.compat.sdk_events import (
    SdkEventSource,
    event_type_of,
    frame_of,
    input_of,
    json_of,
    payload_of,
    raw_body_of,
    sdk_error_of,
    terminal_frame_of,
)
from engine.simulator.shapes import (
    SHAPES,
    assemble,
    completed,
    created,
    error_frame,
    output_items,
    rate_limits_frame,
    text_message,
)
from engine.simulator.replies import Reply, Script
from engine.simulator.server import ResponsesSimulator
from machines.records import Chunk, EndOfStream, HttpError, TransportFault, TurnResult
from engine.drivers.sse import SseDecoder

# -- helpers ---------------------------------------------------------------------------------


def run_observations(observations: Iterable[Any]) -> TurnResult:
    """One attempt fed with observations, exactly as the compat layer feeds them."""
    recording = TurnRecording(SINGLE_ATTEMPT, None, entry="consume")
    for feed in recording.attempts():
        for observed in observations:
            if isinstance(observed, bytes):
                if feed.chunk(observed):
                    break
            elif isinstance(observed, EndOfStream):
                feed.end()
                break
            else:
                feed.fail(observed)
                break
        if not feed.final:
            feed.end()
    return recording.finish()


def run_bytes(chunks: Iterable[bytes]) -> TurnResult:
    return run_observations([*chunks, EndOfStream()])


def key(result: TurnResult) -> tuple[Any, ...]:
    return (
        result.outcome,
        result.output_text,
        result.tool_calls,
        result.error,
        result.response,
        [(a.kind, a.final_state, a.reason) for a in result.attempts],
        [(t.machine, t.attempt, t.source, t.dest, t.trigger) for t in result.transitions],
    )


def clean_first_replies() -> list[tuple[str, Reply]]:
    """Shapes whose first reply is a plain 200 stream (no stall, no drop)."""
    out = []
    for name, script in SHAPES.items():
        reply = script.replies[0]
        if reply.is_stream and reply.status == 200 and all(isinstance(s, Chunk) for s in reply.steps):
            out.append((name, reply))
    return out


def events_of(reply: Reply) -> list[dict[str, Any]]:
    """The JSON events a reply carries (what an SDK would parse), in order."""
    decoder = SseDecoder()
    events = []
    for step in reply.steps:
        for event in decoder.feed(step.data):
            try:
                payload = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(payload, dict):
                events.append(payload)
    return events


def namespace_of(value: Any) -> Any:
    if isinstance(value, dict):
        return SimpleNamespace(**{k: namespace_of(v) for k, v in value.items()})
    if isinstance(value, list):
        return [namespace_of(v) for v in value]
    return value


CLEAN = clean_first_replies()

# -- one normalisation: objects, dicts and plain objects give what the bytes give -------------


def test_clean_shapes_cover_the_interesting_cases() -> None:
    names = {name for name, _ in CLEAN}
    assert {"happy_text", "function_call", "error_first_nested", "completed_output_null",
            "rate_limits_before_created", "failed_server_error"} <= names


@pytest.mark.parametrize("form", ["typed", "dict", "namespace"])
@pytest.mark.parametrize("name,reply", CLEAN, ids=[name for name, _ in CLEAN])
def test_events_in_any_form_run_like_the_bytes(name: str, reply: Reply, form: str) -> None:
    events = events_of(reply)
    if form == "typed":
        objects = [construct_type(type_=ResponseStreamEvent, value=e) for e in events]
    elif form == "dict":
        objects = [dict(e) for e in events]
    else:
        objects = [namespace_of(e) for e in events]
    from_events = run_observations([frame_of(o) for o in objects] + [EndOfStream()])
    from_bytes = run_bytes(step.data for step in reply.steps)
    assert key(from_events) == key(from_bytes)


def test_typed_events_round_trip_the_wire_json() -> None:
    message = text_message("Hello there", deltas=2)
    for event in assemble(created(), message, completed(output_items(message))):
        typed = construct_type(type_=ResponseStreamEvent, value=event)
        assert payload_of(typed) == event
        frame = frame_of(typed)  # field order is the model's; the JSON is the same
        assert frame.startswith(b"event: " + event["type"].encode() + b"\ndata: ")
        assert frame.endswith(b"\n\n") and frame.count(b"\n") == 3
        assert orjson.loads(frame.split(b"data: ", 1)[1]) == event


# -- the real openai client's own objects, over loopback HTTP ---------------------------------


def _client(sim: ResponsesSimulator) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.base_url, api_key="sk-test-0000000000000000", max_retries=0)


@pytest.mark.parametrize(
    "name", ["happy_text", "function_call", "reasoning_then_text", "error_first_top_level",
             "error_first_nested", "completed_output_empty"]
)
def test_real_sdk_stream_events_run_like_the_bytes(name: str) -> None:
    """`responses.create(stream=True)` typed events (and the SDK's own APIError for a nested
    error payload) normalised, against the same server bytes read raw."""
    script = Script((SHAPES[name].replies[0],) * 2)
    with ResponsesSimulator(script) as sim:
        client = _client(sim)
        stream = client.responses.create(model="m", input="hi", stream=True)
        source_events: list[Any] = []

        def typed_observations() -> Iterable[Any]:
            try:
                for event in stream:  # typed objects, parsed by the SDK
                    source_events.append(event)
                    yield frame_of(event)
            except Exception as error:
                observed = input_of(error, opening=False)
                assert observed is not None, error
                yield observed
                return
            yield EndOfStream()

        from_objects = run_observations(typed_observations())
        with client.responses.with_streaming_response.create(
            model="m", input="hi", stream=True
        ) as raw:
            from_bytes = run_bytes(raw.iter_bytes())
    assert key(from_objects) == key(from_bytes)
    if name != "error_first_nested":
        assert source_events and all(isinstance(e, openai.BaseModel) for e in source_events)


def test_sdk_helper_events_drop_client_side_fields() -> None:
    """`responses.stream(...)` events carry `snapshot` / `parsed_arguments`: not wire data."""
    reply = SHAPES["function_call"].replies[0]
    with ResponsesSimulator(Script((reply,))) as sim:
        with _client(sim).responses.stream(model="m", input="hi") as stream:
            helper_events = list(stream)
    assert any("snapshot" in e.to_dict() for e in helper_events)
    payloads = [payload_of(e) for e in helper_events]
    assert payloads == events_of(reply)
    assert run_observations([frame_of(e) for e in helper_events]).tool_calls == run_bytes(
        s.data for s in reply.steps
    ).tool_calls


def test_source_reads_the_http_body_under_sdk_streams() -> None:
    reply = SHAPES["rate_limits_before_created"].replies[0]
    with ResponsesSimulator(Script((reply, reply))) as sim:
        client = _client(sim)
        with client.responses.stream(model="m", input="hi") as helper_stream:
            source = SdkEventSource(helper_stream, final_response=True)
            assert source.reads_bytes
            observed = list(source)
        stream = client.responses.create(model="m", input="hi", stream=True)
        assert raw_body_of(stream) is not None
        from_create = list(SdkEventSource(stream))
        stream.close()
    expected = [step.data for step in reply.steps]
    assert observed == [*expected, EndOfStream()]
    assert from_create == [*expected, EndOfStream()]
    # The SDK's accumulator would have rejected this prelude; the bytes went to the machines.
    assert run_observations(observed).outcome == "completed"
    assert raw_body_of([{"type": "response.created"}]) is None


# -- exceptions ------------------------------------------------------------------------------

REQUEST = httpx2.Request("POST", "http://127.0.0.1/v1/responses")


@pytest.mark.parametrize(
    "message",
    [
        "Didn't receive a `response.completed` event.",
        "Expected to have received `response.created` before `error`",
        "Expected to have received `response.created` before `codex.rate_limits`",
        "Expected to have received `response.created` before `response.in_progress`",
    ],
)
def test_sdk_runtime_errors_for_a_missing_terminal_end_the_stream(message: str) -> None:
    assert input_of(RuntimeError(message), opening=False) == EndOfStream()


def test_sdk_json_parse_failure_ends_the_stream() -> None:
    """The SDK's own parser dies on an undecodable `data:` line (the machines skip it)."""
    with ResponsesSimulator(Script((SHAPES["noisy_but_fine"].replies[0],))) as sim:
        stream = _client(sim).responses.create(model="m", input="hi", stream=True)
        with pytest.raises(ValueError) as raised:
            list(stream)
    assert input_of(raised.value, opening=False) == EndOfStream()


@pytest.mark.parametrize("error", [RuntimeError("boom"), ValueError("x"), KeyError("type")])
def test_other_errors_are_not_stream_conditions(error: Exception) -> None:
    assert input_of(error, opening=False) is None


def test_transport_errors_become_faults() -> None:
    assert input_of(httpx2.RemoteProtocolError("peer closed"), opening=False) == TransportFault(
        "drop", "RemoteProtocolError"
    )
    assert input_of(httpx2.ReadTimeout("slow"), opening=False).kind == "read_timeout"
    assert input_of(httpx2.ConnectError("refused"), opening=True).kind == "connect_error"
    assert input_of(ConnectionError("reset"), opening=False).kind == "drop"
    assert input_of(openai.APIConnectionError(request=REQUEST), opening=True).kind == "connect_error"


def test_status_errors_keep_the_body_as_sent() -> None:
    body = {"error": {"message": "Rate limit reached", "type": "tokens", "code": "rate_limit_exceeded"}}
    response = httpx2.Response(429, content=orjson.dumps(body), request=REQUEST)
    error = openai.RateLimitError("Error code: 429", response=response, body=body["error"])
    observed = input_of(error, opening=True)
    assert isinstance(observed, HttpError) and (observed.status, observed.body) == (429, body)


def test_sdk_api_error_for_an_error_payload_becomes_that_frame() -> None:
    body = {"message": "quota exhausted", "code": "insufficient_quota", "type": "error"}
    frame = input_of(openai.APIError("quota exhausted", REQUEST, body=body), opening=False)
    result = run_observations([frame])
    assert result.outcome == "error"
    assert result.error["message"] == "quota exhausted"
    assert result.error["code"] == "insufficient_quota"


def test_null_output_type_error_is_a_completed_response_without_output() -> None:
    message = text_message("Hi there", deltas=2)
    frames = [frame_of(e) for e in assemble(created(), message)]
    observed = input_of(TypeError("'NoneType' object is not iterable"), opening=False)
    result = run_observations([*frames, observed])
    assert result.outcome == "completed"
    assert result.output_text == "Hi there"  # backfilled from what streamed


def test_transport_errors_take_the_class_the_sdk_stream_raises() -> None:
    body = SimpleNamespace(request=REQUEST)
    timeout = sdk_error_of(httpx2.ReadTimeout("slow"), body)
    assert isinstance(timeout, openai.APITimeoutError)
    dropped = sdk_error_of(httpx2.RemoteProtocolError("peer closed"), body)
    assert type(dropped) is openai.APIConnectionError
    assert isinstance(dropped.__cause__, httpx2.RemoteProtocolError)
    other = ValueError("x")
    assert sdk_error_of(other, body) is other


# -- payloads and terminal frames -------------------------------------------------------------


def test_payload_of_plain_objects_and_missing_type() -> None:
    event = SimpleNamespace(type="response.output_text.delta", delta="Hi", output_index=0)
    assert payload_of(event) == {"type": "response.output_text.delta", "delta": "Hi", "output_index": 0}
    assert event_type_of({"type": "error"}) == "error"
    assert event_type_of(SimpleNamespace(kind="x")) is None
    assert json_of([SimpleNamespace(a=(1, 2))]) == [{"a": [1, 2]}]


@pytest.mark.parametrize(
    "status,kind",
    [("completed", "response.completed"), ("incomplete", "response.incomplete"),
     ("failed", "response.failed"), (None, "response.completed"), ("in_progress", "response.completed")],
)
def test_terminal_frame_follows_the_status(status: str | None, kind: str) -> None:
    frame = terminal_frame_of(SimpleNamespace(status=status, output=[]))
    assert frame.startswith(b"event: " + kind.encode() + b"\n")
    assert orjson.loads(frame.split(b"data: ", 1)[1])["response"]["status"] == status


# -- SdkEventSource over SDK-level fakes --------------------------------------------------------


class FinalOnlyStream:
    """What `responses.stream()` fakes look like: no events, then `get_final_response()`."""

    def __init__(self, final: Any = None, error: Exception | None = None) -> None:
        self.final, self.error, self.closed = final, error, False

    def __iter__(self):
        return iter(())

    def get_final_response(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.final

    def close(self) -> None:
        self.closed = True


def test_final_response_becomes_the_terminal_frame_and_is_kept() -> None:
    final = construct_type(type_=Response, value=SHAPES_FINAL)
    stream = FinalOnlyStream(final)
    source = SdkEventSource(stream, final_response=True)
    observed = list(source)
    assert source.response is final
    assert run_observations(observed).output_text == "Hello"
    source.close()
    assert stream.closed


def test_final_response_missing_ends_the_stream_and_other_errors_escape() -> None:
    missing = SdkEventSource(
        FinalOnlyStream(error=RuntimeError("Didn't receive a `response.completed` event.")),
        final_response=True,
    )
    assert list(missing) == [EndOfStream()]
    assert isinstance(missing.error, RuntimeError)
    with pytest.raises(RuntimeError, match="boom"):
        list(SdkEventSource(FinalOnlyStream(error=RuntimeError("boom")), final_response=True))


def test_events_source_keeps_the_terminal_events_response_object() -> None:
    message = text_message("Hello", deltas=2)
    events = [dict(e) for e in assemble(rate_limits_frame(), created(), message,
                                        completed(output_items(message)))]
    source = SdkEventSource(events)
    observed = list(source)
    assert source.response is events[-1]["response"]
    assert observed[-1] == EndOfStream()
    assert run_observations(observed).rate_limits  # the vendor frame reached the machines


def test_source_error_frame_ends_and_a_concurrent_close_is_harmless() -> None:
    events = assemble(error_frame("no entitlement", "permission_denied"))
    gate = threading.Event()

    def slow():
        yield from events
        gate.wait(2)

    source = SdkEventSource(slow())
    iterator = iter(source)
    first = next(iterator)
    assert run_observations([first]).error["message"] == "no entitlement"
    source.close()  # the generator is suspended, not running: close() works
    gate.set()


_message = text_message("Hello", deltas=1)
SHAPES_FINAL = assemble(created(), _message, completed(output_items(_message)))[-1]["response"]
