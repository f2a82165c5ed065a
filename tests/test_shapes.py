"""Stream shapes: field-level fidelity against the openai SDK's own types, and every SHAPES script
served over real HTTP and decoded back to the expected events."""

from __future__ import annotations

import re
import typing
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import attrs
import httpx2
import openai
import orjson
import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai.types.responses import ResponseStreamEvent

from engine.simulator import shapes
from engine.simulator.shapes import (
    DONE,
    KEEPALIVE,
    SHAPES,
    Comment,
    Data,
    Raw,
    apply_patch_call,
    apply_patch_call_output,
    assemble,
    completed,
    created,
    custom_tool_call,
    error_frame,
    failed,
    function_call,
    in_progress,
    incomplete,
    local_shell_call,
    local_shell_call_output,
    nested_error_frame,
    output_items,
    rate_limits_frame,
    reasoning_summary,
    refusal_message,
    response_metadata_frame,
    shell_call,
    shell_call_output,
    split_text,
    text_message,
    to_reply,
    websocket_timing_frame,
)
from engine.simulator.replies import sse_frame
from engine.simulator.replies import Reply
from engine.simulator.server import ResponsesSimulator
from machines.records import Chunk, Stall, TransportFault

# --------------------------------------------------------------------------------------------
# The SDK's own event models, by event type

_UNION = typing.get_args(ResponseStreamEvent)[0]
SDK_EVENT_MODELS: dict[str, type[pydantic.BaseModel]] = {
    typing.get_args(model.model_fields["type"].annotation)[0]: model
    for model in typing.get_args(_UNION)
}
STREAM_EVENT_ADAPTER: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseStreamEvent)

# Fields real servers send that the SDK's models do not declare (accepted as extras).
KNOWN_EXTRA_FIELDS = {("response", "store")}
# Deliberate departures from the SDK's types, each confined to one field.
SDK_ENUM_GAPS = {"context_length_exceeded", "insufficient_quota"}


def _extra_fields(value: object, path: tuple[Any, ...] = ()) -> set[tuple[Any, ...]]:
    found: set[tuple[Any, ...]] = set()
    if isinstance(value, pydantic.BaseModel):
        found |= {path + (name,) for name in value.model_extra or {}}
        for name in type(value).model_fields:
            found |= _extra_fields(getattr(value, name), path + (name,))
    elif isinstance(value, list):
        for item in value:
            found |= _extra_fields(item, path)
    return found


def _is_vendor_frame(event: dict[str, Any]) -> bool:
    return str(event.get("type", "")).startswith(("codex.", "responsesapi."))


def check_against_sdk(event: dict[str, Any]) -> None:
    """Validate one event dict with the SDK's model for its type; nested-error and vendor frames
    are out of scope, and the three known departures must fail on their one field only."""
    if _is_vendor_frame(event) or (event["type"] == "error" and "error" in event):
        return
    model = SDK_EVENT_MODELS[event["type"]]
    response = event.get("response") or {}
    expected_failure: tuple[str, ...] | None = None
    if event["type"] == "response.failed" and response["error"]["code"] in SDK_ENUM_GAPS:
        expected_failure = ("response", "error", "code")
    elif event["type"] == "response.completed" and response["output"] is None:
        expected_failure = ("response", "output")
    elif "item_id" in event and "output_index" not in event:  # a relay's item_id-only frames
        expected_failure = ("output_index",)
    if expected_failure is not None:
        with pytest.raises(pydantic.ValidationError) as caught:
            model.model_validate(event)
        assert {error["loc"] for error in caught.value.errors()} == {expected_failure}
        return
    parsed = model.model_validate(event)
    assert _extra_fields(parsed) <= KNOWN_EXTRA_FIELDS, event["type"]
    via_union = STREAM_EVENT_ADAPTER.validate_python(event)
    assert type(via_union) is model


def event_dicts(parts: Iterable[object]) -> list[dict[str, Any]]:
    return [part for part in parts if isinstance(part, dict)]


# --------------------------------------------------------------------------------------------
# A tiny SSE line splitter (WHATWG rules, enough for these tests)


def decode_sse(data: bytes) -> list[tuple[str | None, str]]:
    """``(event, data)`` per dispatched event; comments skipped, an unterminated event dropped."""
    lines = re.split(r"\r\n|\r|\n", data.decode("utf-8"))
    lines.pop()  # the text after the last line ending is not a complete line
    events: list[tuple[str | None, str]] = []
    name: str | None = None
    data_lines: list[str] = []
    for line in lines:
        if line == "":
            if data_lines:
                events.append((name, "\n".join(data_lines)))
            name, data_lines = None, []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data_lines.append(value)
    return events


def label(event: tuple[str | None, str]) -> str:
    """The event's ``type``, or ``[DONE]``, or ``<undecodable>`` for data that is not JSON."""
    name, data = event
    if data == "[DONE]":
        return "[DONE]"
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        return "<undecodable>"
    assert payload["type"] == name, "the event: line names the payload's type"
    return str(payload["type"])


def payloads(data: bytes) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for _, text in decode_sse(data):
        try:
            found.append(orjson.loads(text))
        except orjson.JSONDecodeError:
            continue
    return found


# --------------------------------------------------------------------------------------------
# Expected event types per shape and attempt

TEXT = ["response.output_item.added", "response.content_part.added"]
TEXT_DONE = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
REASONING = [
    "response.output_item.added",
    "response.reasoning_summary_part.added",
    "response.reasoning_summary_text.delta",
    "response.reasoning_summary_text.delta",
    "response.reasoning_summary_text.done",
    "response.reasoning_summary_part.done",
    "response.output_item.done",
]
START = ["response.created", "response.in_progress"]
ARG_DELTA = "response.function_call_arguments.delta"
CALL_DONE = ["response.function_call_arguments.done", "response.output_item.done"]
ADDED, DONE_ITEM = "response.output_item.added", "response.output_item.done"
INPUT_DELTA = "response.custom_tool_call_input.delta"
INPUT_DONE = "response.custom_tool_call_input.done"
#: A shell command streamed in two pieces.
COMMAND = ["response.shell_call_command.added", "response.shell_call_command.delta",
           "response.shell_call_command.delta", "response.shell_call_command.done"]
SHELL_OUTPUT = ["response.shell_call_output_content.delta",
                "response.shell_call_output_content.done"]


def text(deltas: int) -> list[str]:
    return [*TEXT, *["response.output_text.delta"] * deltas, *TEXT_DONE]


def refusal(deltas: int, *, after_text: int = 0) -> list[str]:
    """A message that refuses (after a text part of `after_text` deltas, if any)."""
    before = (["response.content_part.added", *["response.output_text.delta"] * after_text,
               *TEXT_DONE[:2]] if after_text else [])
    return [ADDED, *before, "response.content_part.added",
            *["response.refusal.delta"] * deltas, "response.refusal.done",
            "response.content_part.done", DONE_ITEM]


#: A message as a relay passes it on without `output_item.added` / `content_part.added`.
def text_without_added(deltas: int) -> list[str]:
    return [*["response.output_text.delta"] * deltas, *TEXT_DONE]


HAPPY = [*START, *text(4), "response.completed"]
CUT_OFF = [*START, *TEXT, "response.output_text.delta", "response.output_text.delta"]


@attrs.frozen
class Attempt:
    """What the client reads on one attempt: event labels, then how the body ends."""

    labels: tuple[str, ...] = attrs.field(converter=tuple)
    ending: str = "end"  # "end" | "drop" | "stall" | an HTTP status like "429"


EXPECTED: dict[str, tuple[Attempt, ...]] = {
    "happy_text": (Attempt(HAPPY),),
    "reasoning_then_text": (
        Attempt([*START, *REASONING[:3], REASONING[2], *REASONING[3:], *text(3),
                 "response.completed"]),
    ),
    "function_call": (
        Attempt([*START, "response.output_item.added", *[ARG_DELTA] * 3, *CALL_DONE,
                 "response.completed"]),
    ),
    "parallel_function_calls": (
        Attempt([*START,
                 "response.output_item.added", ARG_DELTA, ARG_DELTA, *CALL_DONE,
                 "response.output_item.added", ARG_DELTA, ARG_DELTA, *CALL_DONE,
                 "response.completed"]),
    ),
    "relay_in_progress_first": (Attempt(["response.in_progress", *text(3), "response.completed"]),),
    "rate_limits_before_created": (
        Attempt(["codex.rate_limits", *START, *text(3), "response.completed"]),
    ),
    "error_first_top_level": (Attempt(["error"]),),
    "error_first_nested": (Attempt(["error"]),),
    "completed_output_empty": (Attempt([*START, *REASONING, *text(3), "response.completed"]),),
    "completed_output_null": (Attempt([*START, *REASONING, *text(3), "response.completed"]),),
    "function_call_without_item_done": (
        Attempt([*START, "response.output_item.added", *[ARG_DELTA] * 3, "response.completed"]),
    ),
    "incomplete_max_output_tokens": (Attempt([*START, *text(3), "response.incomplete"]),),
    "incomplete_content_filter": (Attempt([*START, *text(2), "response.incomplete"]),),
    "failed_server_error": (
        Attempt([*START, *TEXT, "response.output_text.delta", "response.output_text.delta",
                 "response.failed"]),
    ),
    "failed_rate_limit_exceeded": (Attempt([*START, "response.failed"]),),
    "failed_context_length_exceeded": (Attempt([*START, "response.failed"]),),
    "failed_insufficient_quota": (Attempt([*START, "response.failed"]),),
    "noisy_but_fine": (
        Attempt([*START, "codex.response.metadata", *TEXT,
                 "response.output_text.delta", "response.output_text.delta", "<undecodable>",
                 "response.output_text.delta", "response.output_text.delta", *TEXT_DONE,
                 "responsesapi.websocket_timing", "response.completed", "[DONE]"]),
    ),
    "crlf_split_chunks": (Attempt([*START, *text(5), "response.completed"]),),
    "drop_then_retry": (Attempt(CUT_OFF, "drop"), Attempt(HAPPY)),
    "stall_then_retry": (Attempt(CUT_OFF, "stall"), Attempt(HAPPY)),
    "eof_then_retry": (Attempt(CUT_OFF), Attempt(HAPPY)),
    "http_500": (Attempt([], "500"),) * 3,
    "http_429": (Attempt([], "429"),) * 3,
    "http_401": (Attempt([], "401"),) * 3,
    "http_503_then_ok": (Attempt([], "503"), Attempt([], "503"), Attempt(HAPPY)),
    "drop_every_attempt": (Attempt(CUT_OFF, "drop"),) * 3,
    # to a request that is not a background one, the background shapes' replies are sent whole
    "background_drop_then_resume": (Attempt(HAPPY),),
    "background_drop_before_created": (Attempt(HAPPY), Attempt(HAPPY)),
    "custom_tool_call": (
        Attempt([*START, ADDED, *[INPUT_DELTA] * 4, INPUT_DONE, DONE_ITEM, "response.completed"]),
    ),
    "custom_tool_call_server_side": (
        Attempt([*START, ADDED, INPUT_DELTA, INPUT_DONE, DONE_ITEM,
                 ADDED, INPUT_DELTA, INPUT_DONE, DONE_ITEM, *text(3), "response.completed"]),
    ),
    "custom_tool_call_dropped": (Attempt([*START, ADDED, INPUT_DELTA, INPUT_DELTA], "drop"),) * 3,
    "local_shell_call": (Attempt([*START, ADDED, DONE_ITEM, "response.completed"]),),
    "local_shell_call_with_output": (
        Attempt([*START, ADDED, DONE_ITEM, ADDED, DONE_ITEM, *text(3), "response.completed"]),
    ),
    "shell_call": (
        Attempt([*START, ADDED, *COMMAND, *COMMAND, DONE_ITEM, "response.completed"]),
    ),
    "shell_call_hosted": (
        Attempt([*START, ADDED, *COMMAND, DONE_ITEM, ADDED, *SHELL_OUTPUT, DONE_ITEM, *text(3),
                 "response.completed"]),
    ),
    "apply_patch_call": (Attempt([*START, ADDED, DONE_ITEM, "response.completed"]),),
    "commentary_then_tool_call": (
        Attempt([*START, *text(3), ADDED, ARG_DELTA, ARG_DELTA, *CALL_DONE,
                 "response.completed"]),
    ),
    "commentary_then_answer": (Attempt([*START, *text(3), *text(3), "response.completed"]),),
    "commentary_phase_only_on_done": (
        Attempt([*START, *text(3), *text(3), "response.completed"]),
    ),
    "commentary_without_item_added": (
        Attempt([*START, *text_without_added(3), *text_without_added(3), "response.completed"]),
    ),
    "commentary_rotating_item_ids": (
        Attempt([*START, *text(3), *text(3), "response.completed"]),
    ),
    "commentary_completed_output_empty": (
        Attempt([*START, *text(3), *text(3), "response.completed"]),
    ),
    "commentary_drop_then_retry": (
        Attempt(CUT_OFF, "drop"), Attempt([*START, *text(3), *text(3), "response.completed"]),
    ),
    "refusal": (Attempt([*START, *refusal(3), "response.completed"]),),
    "refusal_after_text": (Attempt([*START, *refusal(2, after_text=2), "response.completed"]),),
    "apply_patch_call_with_output": (
        Attempt([*START, ADDED, DONE_ITEM, ADDED, DONE_ITEM, *text(3), "response.completed"]),
    ),
}


def test_every_shape_has_an_expectation_and_a_description() -> None:
    assert set(EXPECTED) == set(SHAPES)
    for name, script in SHAPES.items():
        assert script.name == name
        assert script.description and "\n" not in script.description
        assert len(script.replies) == len(EXPECTED[name])


def _read_attempt(client: openai.OpenAI) -> tuple[bytes, str]:
    received: list[bytes] = []
    try:
        with client.responses.with_streaming_response.create(
            model="m", input="hi", stream=True
        ) as response:
            for piece in response.iter_bytes():
                received.append(piece)
    except httpx2.RemoteProtocolError:
        return b"".join(received), "drop"
    except httpx2.ReadTimeout:
        return b"".join(received), "stall"
    except openai.APIStatusError as error:
        assert isinstance(error.body, dict)
        assert {"message", "type", "param", "code"} <= set(error.body)
        return b"", str(error.status_code)
    return b"".join(received), "end"


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shape_serves_over_http_and_decodes_to_the_expected_events(name: str) -> None:
    script = SHAPES[name]
    with ResponsesSimulator(script) as sim:
        client = openai.OpenAI(
            base_url=sim.base_url,
            api_key="sk-test",
            max_retries=0,
            timeout=openai.Timeout(5, read=0.3),
        )
        for attempt_number, expected in enumerate(EXPECTED[name], start=1):
            body, ending = _read_attempt(client)
            assert ending == expected.ending, f"attempt {attempt_number}"
            labels = [label(event) for event in decode_sse(body)]
            assert labels == list(expected.labels), f"attempt {attempt_number}"
            events = payloads(body)
            for event in events:
                check_against_sdk(event)
            _check_sequence_numbers(events)
            _check_text_consistency(events)
        assert sim.server_errors == []


def _check_sequence_numbers(events: list[dict[str, Any]]) -> None:
    numbers = [event["sequence_number"] for event in events if "sequence_number" in event]
    assert numbers == list(range(len(numbers)))
    for event in events:
        if event["type"].startswith("response.") or event["type"] == "error":
            assert "sequence_number" in event


def _place(event: dict[str, Any]) -> Any:
    """Where a frame streams: its output index (a relay may rename the item mid-stream), else
    its item id."""
    return event.get("output_index", event.get("item_id"))


def _check_text_consistency(events: list[dict[str, Any]]) -> None:
    """Deltas add up to the ``done`` text and to the finished item, per item."""
    parts: dict[tuple[Any, int, str], str] = {}  # (place, content index, part type) -> text
    arg_deltas: dict[str, str] = {}
    input_deltas: dict[str, str] = {}
    commands: dict[tuple[int, int], str] = {}
    for event in events:
        kind = event["type"]
        if kind == "response.custom_tool_call_input.delta":
            input_deltas[event["item_id"]] = input_deltas.get(event["item_id"], "") + event["delta"]
        elif kind == "response.custom_tool_call_input.done":
            assert input_deltas[event["item_id"]] == event["input"]
        elif kind == "response.output_item.done" and event["item"]["type"] == "custom_tool_call":
            assert event["item"]["input"] == input_deltas[event["item"]["id"]]
        elif kind == "response.shell_call_command.added":
            commands[event["output_index"], event["command_index"]] = event["command"]
        elif kind == "response.shell_call_command.delta":
            commands[event["output_index"], event["command_index"]] += event["delta"]
        elif kind == "response.shell_call_command.done":
            assert commands[event["output_index"], event["command_index"]] == event["command"]
        elif kind == "response.output_item.done" and event["item"]["type"] == "shell_call":
            index = event["output_index"]
            streamed = [commands[key] for key in sorted(commands) if key[0] == index]
            assert event["item"]["action"]["commands"] == streamed
        part = {"response.output_text": "output_text", "response.refusal": "refusal"}.get(
            kind.rsplit(".", 1)[0]
        )
        if part is not None:
            key = (_place(event), event["content_index"], part)
            if kind.endswith(".delta"):
                parts[key] = parts.get(key, "") + event["delta"]
            else:
                assert parts[key] == event["text" if part == "output_text" else "refusal"]
        elif kind == "response.function_call_arguments.delta":
            arg_deltas[event["item_id"]] = arg_deltas.get(event["item_id"], "") + event["delta"]
        elif kind == "response.function_call_arguments.done":
            assert arg_deltas[event["item_id"]] == event["arguments"]
        elif kind == "response.output_item.done" and event["item"]["type"] == "message":
            for index, done in enumerate(event["item"]["content"]):
                streamed = [parts.get((place, index, done["type"]))
                            for place in (event["output_index"], event["item"]["id"])]
                assert done.get("text", done.get("refusal")) in streamed


# --------------------------------------------------------------------------------------------
# Builders against the SDK's types


def _builder_streams() -> Iterator[list[Any]]:
    message = text_message("Hello, wörld — 🚀!", deltas=5)
    yield assemble(created(), in_progress(), message, completed(output_items(message)))
    reasoning = reasoning_summary("Think briefly.", deltas=3)
    answer = text_message("Done.", deltas=2, output_index=1)
    yield assemble(
        created(reasoning_effort="high"),
        reasoning,
        answer,
        completed(output_items(reasoning, answer), reasoning_effort="high"),
    )
    calls = [
        function_call("get_weather", '{"city":"Oslo"}', output_index=0),
        function_call("get_time", "{}", output_index=1, deltas=1, call_id="call_x"),
    ]
    yield assemble(
        created(tools=[shapes.WEATHER_TOOL]), *calls, completed(output_items(*calls))
    )
    yield assemble(created(), function_call("f", '{"a": 1}', finished=False), completed([]))
    yield assemble(created(), text_message("partial", finished=False))
    reasons: tuple[Literal["max_output_tokens", "content_filter"], ...] = (
        "max_output_tokens",
        "content_filter",
    )
    for reason in reasons:
        cut = text_message("cut", status="incomplete")
        yield assemble(created(), cut, incomplete(reason, output_items(cut)))
    for code in shapes.FAILURE_MESSAGES:
        yield assemble(created(), failed(code))
    yield assemble(created(), failed("server_error", "custom words"))
    yield assemble(completed(None))
    yield assemble(error_frame("Entitlement missing.", "permission_denied"))
    yield assemble(nested_error_frame("Too Many Requests", type="too_many_requests", code=None))
    yield assemble(rate_limits_frame(), response_metadata_frame(), websocket_timing_frame())
    calls = [
        custom_tool_call("apply_patch", "*** Begin Patch\n*** End Patch\n", output_index=0),
        local_shell_call(["ls"], output_index=1),
        local_shell_call_output("call_01_sim", '{"output":""}', output_index=2),
        shell_call(["echo hi"], output_index=3),
        shell_call(["pwd"], output_index=4,
                   environment={"type": "container_reference", "container_id": "cntr_1"}),
        shell_call_output("call_04_sim", [("/\n", "", 0), ("", "boom", 1)], output_index=5),
        apply_patch_call({"type": "delete_file", "path": "old.py"}, output_index=6),
        apply_patch_call_output("call_06_sim", "Deleted old.py", output_index=7),
    ]
    tools = [shapes.APPLY_PATCH_TOOL, {"type": "local_shell"}, {"type": "shell"},
             {"type": "apply_patch"}]
    yield assemble(created(tools=tools), *calls, completed(output_items(*calls), tools=tools))
    yield assemble(created(), custom_tool_call("f", "raw", finished=False),
                   shell_call(["ls"], finished=False))
    preamble = text_message("Let me look.", output_index=0, phase="commentary")
    answer = text_message("Found it.", output_index=1, phase="final_answer")
    refused = refusal_message("I can't help with that.", text="Sure: ", output_index=2)
    yield assemble(created(), preamble, answer, refused,
                   completed(output_items(preamble, answer, refused)))


def test_every_builder_event_validates_against_the_sdk_types() -> None:
    checked: set[str] = set()
    for stream in _builder_streams():
        for event in event_dicts(stream):
            check_against_sdk(event)
            checked.add(event["type"])
    assert {
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.output_item.done",
        "response.content_part.added",
        "response.content_part.done",
        "response.output_text.delta",
        "response.output_text.done",
        "response.refusal.delta",
        "response.refusal.done",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_part.done",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.custom_tool_call_input.delta",
        "response.custom_tool_call_input.done",
        "response.shell_call_command.added",
        "response.shell_call_command.delta",
        "response.shell_call_command.done",
        "response.shell_call_output_content.delta",
        "response.shell_call_output_content.done",
        "response.completed",
        "response.incomplete",
        "response.failed",
        "error",
    } <= checked


def test_failed_messages_carry_the_provider_wording() -> None:
    (event,) = failed("rate_limit_exceeded")
    message = event["response"]["error"]["message"]
    assert message.startswith("Rate limit reached") and "Please try again in 20s." in message
    assert set(shapes.FAILURE_MESSAGES) == {
        "server_error",
        "rate_limit_exceeded",
        "context_length_exceeded",
        "insufficient_quota",
    }


def test_function_call_items_carry_ids_name_arguments_and_status() -> None:
    events = function_call("get_weather", '{"city":"Paris"}', output_index=2, call_id="call_a")
    added, done = events[0]["item"], events[-1]["item"]
    assert added == {
        "id": "fc_02_sim",
        "type": "function_call",
        "status": "in_progress",
        "arguments": "",
        "call_id": "call_a",
        "name": "get_weather",
    }
    assert done == {**added, "status": "completed", "arguments": '{"city":"Paris"}'}
    assert [e["type"] for e in function_call("f", "{}", deltas=1, finished=False)] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
    ]


# --------------------------------------------------------------------------------------------
# Assembly and encoding


def test_assemble_numbers_responses_events_in_order_and_leaves_vendor_frames_alone() -> None:
    stream = assemble(rate_limits_frame(), KEEPALIVE, created(), text_message("ab", deltas=2), DONE)
    numbered = [p for p in stream if isinstance(p, dict) and "sequence_number" in p]
    assert [p["sequence_number"] for p in numbered] == list(range(len(numbered)))
    assert "sequence_number" not in stream[0]
    assert stream[1] is KEEPALIVE and stream[-1] is DONE
    assert list(stream[2])[:2] == ["type", "sequence_number"]


def test_assemble_keeps_explicit_numbers_and_copies_events() -> None:
    original = {"type": "response.in_progress", "sequence_number": 7, "response": {}}
    later = {"type": "response.output_text.delta"}
    stream = assemble(original, later)
    assert stream[0] == original and stream[0] is not original
    assert stream[1]["sequence_number"] == 8  # type: ignore[index]
    assert "sequence_number" not in later


def test_builders_are_deterministic() -> None:
    assert shapes._build_shapes() == SHAPES
    assert list(_builder_streams()) == list(_builder_streams())


def test_sse_frame_bytes() -> None:
    event = {"type": "response.output_text.delta", "delta": "é"}
    assert sse_frame(event) == (
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
        b'"delta":"\xc3\xa9"}\n\n'
    )
    assert sse_frame(event, crlf=True) == sse_frame(event).replace(b"\n", b"\r\n")


def test_markers_encode_as_sse_lines() -> None:
    reply = to_reply(
        [KEEPALIVE, Comment("ping"), DONE, Data("{bad", event="x"), Raw(b"raw\r\n")], crlf=True
    )
    assert [step.data for step in reply.steps] == [  # type: ignore[union-attr]
        b": keepalive\r\n\r\n",
        b": ping\r\n\r\n",
        b"data: [DONE]\r\n\r\n",
        b"event: x\r\ndata: {bad\r\n\r\n",
        b"raw\r\n",
    ]


def test_to_reply_chunking_modes() -> None:
    parts = [*assemble(created(), text_message("hello", deltas=2)), Stall(0.5), DONE, TransportFault("drop")]
    events = event_dicts(parts)
    whole_bytes = b"".join(sse_frame(event) for event in events)
    by_event = to_reply(parts)
    assert [type(s) for s in by_event.steps] == [Chunk] * len(events) + [Stall, Chunk, TransportFault]
    whole = to_reply(parts, chunking="whole")
    assert whole.steps == (Chunk(whole_bytes), Stall(0.5), Chunk(b"data: [DONE]\n\n"), TransportFault("drop"))
    sliced = to_reply(parts, chunking=10)
    sends = [s for s in sliced.steps if isinstance(s, Chunk)]
    assert all(len(s.data) <= 10 for s in sends)
    assert b"".join(s.data for s in sends) == whole_bytes + b"data: [DONE]\n\n"
    assert sliced.steps[-1] == TransportFault("drop")
    with pytest.raises(ValueError):
        to_reply(parts, chunking=0)
    with pytest.raises(ValueError):
        to_reply(parts, chunking="lines")  # type: ignore[arg-type]


def test_crlf_shape_splits_lines_pairs_and_characters() -> None:
    (reply,) = SHAPES["crlf_split_chunks"].replies
    chunks = [step.data for step in reply.steps if isinstance(step, Chunk)]
    body = b"".join(chunks)
    assert b"\r\n" in body and b"\n" not in body.replace(b"\r\n", b"")

    def splits_a_character(chunk: bytes) -> bool:
        try:
            chunk.decode("utf-8")
        except UnicodeDecodeError:
            return True
        return False

    assert any(splits_a_character(chunk) for chunk in chunks)
    assert any(chunk.endswith(b"\r") for chunk in chunks)
    deltas = [e["delta"] for e in payloads(body) if e["type"] == "response.output_text.delta"]
    assert "".join(deltas) == shapes._UTF8_ANSWER
    assert any(ord(ch) > 0xFFFF for ch in "".join(deltas))


def test_http_error_shapes_have_openai_shaped_bodies() -> None:
    for name in ("http_500", "http_429", "http_401"):
        for reply in SHAPES[name].replies:
            assert isinstance(reply, Reply) and reply.body is not None
            error = orjson.loads(reply.body)["error"]
            assert set(error) == {"message", "type", "param", "code"}
    assert orjson.loads(SHAPES["http_429"].replies[0].body or b"")["error"]["code"] == (
        "rate_limit_exceeded"
    )


@given(st.text(max_size=40), st.integers(min_value=1, max_value=12))
def test_split_text_covers_the_text_with_non_empty_pieces(text: str, parts: int) -> None:
    pieces = split_text(text, parts)
    assert "".join(pieces) == text
    assert len(pieces) == min(parts, len(text))
    assert all(pieces)
    assert max(map(len, pieces), default=0) - min(map(len, pieces), default=0) <= 1
