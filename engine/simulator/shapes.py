"""Realistic OpenAI Responses-API streams, as data, and the simulator scripts built from them.

Theory of operation
===================

A stream is a list of *parts*. A part is either an event dict, exactly as the Responses API puts
it in an SSE ``data:`` line, or a marker for something that is not an event:

* :class:`Comment` — an SSE comment line (``: keepalive``), which clients must ignore;
* :class:`Data` — a ``data:`` line with arbitrary text, for ``data: [DONE]`` (:data:`DONE`) and
  for payloads that are not valid JSON;
* :class:`Raw` — bytes written verbatim;
* :class:`~machines.records.Stall` and :class:`~machines.records.TransportFault` — transport faults, which
  end up as steps of the simulator reply.

Building a stream happens in three layers:

1. **Builders** return lists of *unnumbered* event dicts for one piece of a response:
   :func:`created`, :func:`in_progress`, :func:`text_message` (a ``phase`` labels it commentary
   or the final answer), :func:`refusal_message`, :func:`message` (any mix of text and refusal
   parts), :func:`reasoning_summary`,
   :func:`function_call`, the other calls (:func:`custom_tool_call`, :func:`local_shell_call`,
   :func:`shell_call`, :func:`apply_patch_call`) and the output items that report them run by
   the server (:func:`local_shell_call_output`, :func:`shell_call_output`,
   :func:`apply_patch_call_output`), :func:`completed`, :func:`incomplete`, :func:`failed`, and the
   non-standard frames :func:`rate_limits_frame`, :func:`error_frame`,
   :func:`nested_error_frame`, :func:`response_metadata_frame`, :func:`websocket_timing_frame`.
   Terminal builders take the ``output`` list; :func:`output_items` collects it from the
   ``response.output_item.done`` events of the builders used before. How relays pass a message
   on is applied to a builder's events: :func:`phase_only_on_done`, :func:`without_item_added`,
   :func:`rotating_item_ids`.
2. :func:`assemble` flattens builder results and markers into one list and gives every Responses
   event (``type`` ``"error"`` or ``"response.*"``) its ``sequence_number``, counting from 0 in
   stream order, as the API does. Vendor frames (``codex.*``, ``responsesapi.*``) carry none.
3. :func:`to_reply` encodes the parts as SSE bytes (:func:`sse_frame`, LF or CRLF line endings)
   and cuts them into :class:`~machines.records.Chunk` chunks: one per part (``"event"``), one per
   run between faults (``"whole"``), or fixed-size byte slices (an ``int``), which may split a
   line ending or a multi-byte UTF-8 character.

Everything is deterministic: ids are fixed strings derived from positions, ``created_at`` is the
constant :data:`CREATED_AT`, token counts are computed from text lengths. Building the same
stream twice gives equal dicts and identical bytes.

Field-level fidelity: every standard event validates against the openai SDK's own model for its
``type`` (``tests/test_shapes.py`` checks this), with three deliberate exceptions that real servers
and relays send and the SDK's types reject: ``response.failed`` with error code
``context_length_exceeded`` or ``insufficient_quota`` (not in the SDK's ``ResponseError.code``
enumeration), ``response.completed`` with ``output: null``, and content frames addressed by
``item_id`` only, without ``output_index`` (:func:`without_item_added`). The relays' other
liberties (:func:`phase_only_on_done`, :func:`rotating_item_ids`) stay within the types.

:data:`SHAPES` maps a name to a :class:`~engine.simulator.server.Script` for each real-world stream
shape the state machines must handle (see DESIGN.md, "Real-world stream shapes"). Scripts with
a fault on the first attempt carry a second, good reply for the retry. Every reply carries the
headers a real server sends: :data:`SUCCESS_HEADERS` on streams (rate-limit budget, processing
time), ``retry-after`` and a spent budget on the 429 (:data:`RATE_LIMITED_HEADERS`); the
simulator adds a per-request ``x-request-id``. A scenario can shape them further: ``stall_s``
sets how long the stall shapes stay silent (default :data:`STALL_SECONDS`), ``drop = "rst"``
makes the drop shapes reset the connection (see ``engine.simulator.scenarios``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Literal

import attrs

from engine.simulator.replies import Reply, Script, error_body, sse_frame
from machines.records import Chunk, Fault, Stall, TransportFault

__all__ = [
    "CREATED_AT",
    "DONE",
    "FAILURE_MESSAGES",
    "KEEPALIVE",
    "MessagePart",
    "MODEL",
    "RATE_LIMITED_HEADERS",
    "RESPONSE_ID",
    "SHAPES",
    "BACKGROUND_SHAPES",
    "STALL_SECONDS",
    "SUCCESS_HEADERS",
    "WEATHER_TOOL",
    "APPLY_PATCH_TOOL",
    "Comment",
    "Data",
    "Event",
    "Raw",
    "StreamPart",
    "apply_patch_call",
    "apply_patch_call_output",
    "assemble",
    "completed",
    "created",
    "custom_tool_call",
    "encode_part",
    "error_frame",
    "failed",
    "function_call",
    "http_error",
    "in_progress",
    "incomplete",
    "local_shell_call",
    "local_shell_call_output",
    "message",
    "nested_error_frame",
    "nested_json",
    "output_items",
    "phase_only_on_done",
    "rate_limits_frame",
    "reasoning_summary",
    "refusal_message",
    "response_metadata_frame",
    "response_object",
    "rotating_item_ids",
    "shell_call",
    "shell_call_output",
    "split_text",
    "sse_frame",
    "text_message",
    "to_reply",
    "usage_for",
    "websocket_timing_frame",
    "without_item_added",
]

Event = dict[str, Any]

CREATED_AT: Final = 1_750_000_000
"""Fixed ``created_at`` of every simulated response (2025-06-15T15:06:40Z)."""
MODEL: Final = "gpt-5-2025-08-07"
RESPONSE_ID: Final = "resp_0000000000000000000000000000000000000000000000a1"
STALL_SECONDS: Final = 2.0
"""How long the stall shapes keep the socket silent: far beyond any test idle timeout
(tenths of a second), short enough that a caller without one only waits briefly."""

FAILURE_MESSAGES: Final[Mapping[str, str]] = {
    "server_error": (
        "The server had an error processing your request. Sorry about that! You can retry your "
        "request, or contact us through our help center at help.openai.com if you keep seeing "
        "this error."
    ),
    "rate_limit_exceeded": (
        "Rate limit reached for gpt-5 in organization org-simulator on tokens per min (TPM): "
        "Limit 30000, Used 29400, Requested 1850. Please try again in 20s. Visit "
        "https://platform.openai.com/account/rate-limits to learn more."
    ),
    "context_length_exceeded": (
        "Your input exceeds the context window of this model. Please adjust your input and try "
        "again."
    ),
    "insufficient_quota": (
        "You exceeded your current quota, please check your plan and billing details. For more "
        "information on this error, read the docs: "
        "https://platform.openai.com/docs/guides/error-codes/api-errors."
    ),
}
"""The provider's wording for each ``response.failed`` error code the shapes use."""

SUCCESS_HEADERS: Final[tuple[tuple[str, str], ...]] = (
    ("openai-version", "2020-10-01"),
    ("openai-processing-ms", "212"),
    ("x-ratelimit-limit-requests", "10000"),
    ("x-ratelimit-remaining-requests", "9999"),
    ("x-ratelimit-reset-requests", "6ms"),
    ("x-ratelimit-limit-tokens", "30000000"),
    ("x-ratelimit-remaining-tokens", "29998150"),
    ("x-ratelimit-reset-tokens", "3ms"),
)
"""Headers OpenAI sends with a successful stream (besides ``x-request-id``, which the simulator
numbers per request): the API version, processing time and the rate-limit budget left."""

RATE_LIMITED_HEADERS: Final[tuple[tuple[str, str], ...]] = (
    ("retry-after", "20"),
    ("openai-version", "2020-10-01"),
    ("x-ratelimit-limit-requests", "10000"),
    ("x-ratelimit-remaining-requests", "9998"),
    ("x-ratelimit-reset-requests", "12ms"),
    ("x-ratelimit-limit-tokens", "30000"),
    ("x-ratelimit-remaining-tokens", "600"),
    ("x-ratelimit-reset-tokens", "20s"),
)
"""Headers of the ``http_429`` shape: a ``retry-after`` that agrees with the body's "Please try
again in 20s", and a token budget that is spent."""

WEATHER_TOOL: Final[Mapping[str, Any]] = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
    "strict": True,
}


# --------------------------------------------------------------------------------------------
# Markers


@attrs.frozen
class Comment:
    """An SSE comment line, ``: <text>``, followed by a blank line."""

    text: str = "keepalive"


@attrs.frozen
class Data:
    """A ``data:`` line holding ``text`` as is (not JSON-encoded), optionally after an ``event:``
    line, followed by a blank line."""

    text: str
    event: str | None = None


@attrs.frozen
class Raw:
    """Bytes written verbatim, line endings included."""

    data: bytes


KEEPALIVE: Final = Comment("keepalive")
DONE: Final = Data("[DONE]")

StreamPart = Event | Comment | Data | Raw | Stall | TransportFault


# --------------------------------------------------------------------------------------------
# Encoding


def _line_ending(crlf: bool) -> bytes:
    return b"\r\n" if crlf else b"\n"


def encode_part(part: StreamPart, *, crlf: bool = False) -> bytes:
    """The SSE bytes of one non-fault part."""
    eol = _line_ending(crlf)
    if isinstance(part, dict):
        return sse_frame(part, crlf=crlf)
    if isinstance(part, Comment):
        return b": " + part.text.encode() + eol + eol
    if isinstance(part, Data):
        head = b"event: " + part.event.encode() + eol if part.event is not None else b""
        return head + b"data: " + part.text.encode() + eol + eol
    if isinstance(part, Raw):
        return part.data
    raise TypeError(f"not an encodable stream part: {part!r}")


Chunking = Literal["event", "whole"] | int


def to_reply(
    parts: Iterable[StreamPart],
    *,
    chunking: Chunking = "event",
    crlf: bool = False,
    status: int = 200,
    headers: Sequence[tuple[str, str]] = (),
) -> Reply:
    """Encode ``parts`` as a streaming :class:`Reply`, with the chosen chunk boundaries.

    ``"event"``: one chunk per part. ``"whole"``: one chunk per run of parts between faults.
    ``int`` n: each run between faults is concatenated and cut every n bytes. ``Stall`` and
    ``TransportFault`` parts always become steps of their own.
    """
    if isinstance(chunking, bool) or not (
        chunking in ("event", "whole") or (isinstance(chunking, int) and chunking > 0)
    ):
        raise ValueError(f"chunking must be 'event', 'whole' or a positive int, got {chunking!r}")
    steps: list[Chunk | Stall | TransportFault] = []
    run: list[bytes] = []

    def flush_run() -> None:
        if not run:
            return
        if chunking == "event":
            steps.extend(Chunk(data) for data in run if data)
        else:
            joined = b"".join(run)
            size = len(joined) if chunking == "whole" else int(chunking)
            steps.extend(Chunk(joined[i : i + size]) for i in range(0, len(joined), size))
        run.clear()

    for part in parts:
        if isinstance(part, (Stall, TransportFault)):
            flush_run()
            steps.append(part)
        else:
            run.append(encode_part(part, crlf=crlf))
    flush_run()
    return Reply(status=status, steps=tuple(steps), headers=tuple(headers))


def http_error(
    status: int,
    message: str,
    *,
    type: str,
    code: str | None,
    param: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
) -> Reply:
    """A non-streaming error reply with an OpenAI-shaped JSON body."""
    return Reply(
        status=status,
        body=error_body(message, type=type, code=code, param=param),
        headers=tuple(headers),
    )


# --------------------------------------------------------------------------------------------
# Assembly


def _is_responses_event(part: object) -> bool:
    if not isinstance(part, dict):
        return False
    event_type = part.get("type")
    if not isinstance(event_type, str):
        return False
    return event_type == "error" or event_type.startswith("response.")


def _with_sequence_number(event: Event, number: int) -> Event:
    numbered: Event = {"type": event["type"], "sequence_number": number}
    numbered.update((key, value) for key, value in event.items() if key != "type")
    return numbered


def assemble(*pieces: StreamPart | Iterable[StreamPart]) -> list[StreamPart]:
    """Flatten builder results and markers into one stream and number its Responses events.

    Each Responses event without a ``sequence_number`` gets the next one (0, 1, 2, ...), placed
    right after ``type`` as the API writes it; events that already have one keep it and the count
    goes on from there. Event dicts are copied, never changed in place.
    """
    stream: list[StreamPart] = []
    next_number = 0
    for piece in pieces:
        parts: Iterable[StreamPart] = (
            [piece] if isinstance(piece, (dict, Comment, Data, Raw, Stall, TransportFault)) else piece
        )
        for part in parts:
            if _is_responses_event(part):
                assert isinstance(part, dict)
                if "sequence_number" in part:
                    next_number = int(part["sequence_number"]) + 1
                    stream.append(dict(part))
                else:
                    stream.append(_with_sequence_number(part, next_number))
                    next_number += 1
            elif isinstance(part, dict):
                stream.append(dict(part))
            else:
                stream.append(part)
    return stream


# --------------------------------------------------------------------------------------------
# Response objects


def split_text(text: str, parts: int) -> list[str]:
    """``text`` cut into ``parts`` non-empty pieces of nearly equal length (fewer if too short)."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    count = min(parts, len(text))
    if count == 0:
        return []
    base, extra = divmod(len(text), count)
    pieces: list[str] = []
    start = 0
    for index in range(count):
        end = start + base + (1 if index < extra else 0)
        pieces.append(text[start:end])
        start = end
    return pieces


def _item_text(item: Mapping[str, Any]) -> str:
    kind = item.get("type")
    if kind == "message":
        return "".join(part.get("text", "") for part in item.get("content", []))
    if kind == "reasoning":
        return "".join(part.get("text", "") for part in item.get("summary", []))
    if kind == "function_call":
        return str(item.get("arguments", "")) + str(item.get("name", ""))
    return ""


def usage_for(output: Sequence[Mapping[str, Any]] | None, *, input_tokens: int = 24) -> Event:
    """A ``usage`` object whose token counts follow from the output's text length (~4 chars a
    token), so it is deterministic and plausible."""
    items = list(output or [])
    reasoning = sum(len(_item_text(i)) for i in items if i.get("type") == "reasoning") // 4
    visible = sum(len(_item_text(i)) for i in items if i.get("type") != "reasoning") // 4
    output_tokens = reasoning + visible + (1 if items else 0)
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + output_tokens,
    }


def response_object(
    status: str,
    *,
    output: Sequence[Mapping[str, Any]] | None = (),
    usage: Mapping[str, Any] | None = None,
    error: Mapping[str, Any] | None = None,
    incomplete_details: Mapping[str, Any] | None = None,
    tools: Sequence[Mapping[str, Any]] = (),
    reasoning_effort: str | None = None,
    response_id: str = RESPONSE_ID,
    model: str = MODEL,
) -> Event:
    """A Response object as the API embeds it in lifecycle events (``output=None`` gives
    ``"output": null``, as some backends send)."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": CREATED_AT,
        "status": status,
        "background": False,
        "completed_at": CREATED_AT + 3 if status == "completed" else None,
        "error": dict(error) if error is not None else None,
        "incomplete_details": dict(incomplete_details) if incomplete_details is not None else None,
        "instructions": None,
        "max_output_tokens": None,
        "max_tool_calls": None,
        "model": model,
        "output": [dict(item) for item in output] if output is not None else None,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "prompt_cache_key": None,
        "reasoning": {
            "effort": reasoning_effort,
            "summary": "auto" if reasoning_effort is not None else None,
        },
        "safety_identifier": None,
        "service_tier": "default",
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [dict(tool) for tool in tools],
        "top_logprobs": 0,
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": dict(usage) if usage is not None else None,
        "user": None,
        "metadata": {},
    }


# --------------------------------------------------------------------------------------------
# Builders: lifecycle


def created(
    *, tools: Sequence[Mapping[str, Any]] = (), reasoning_effort: str | None = None
) -> list[Event]:
    """``response.created`` with an empty, in-progress response."""
    response = response_object("in_progress", tools=tools, reasoning_effort=reasoning_effort)
    return [{"type": "response.created", "response": response}]


def in_progress(
    *, tools: Sequence[Mapping[str, Any]] = (), reasoning_effort: str | None = None
) -> list[Event]:
    """``response.in_progress`` (the first frame of some relays, which skip ``created``)."""
    response = response_object("in_progress", tools=tools, reasoning_effort=reasoning_effort)
    return [{"type": "response.in_progress", "response": response}]


def completed(
    output: Sequence[Mapping[str, Any]] | None,
    *,
    usage: Mapping[str, Any] | None = None,
    tools: Sequence[Mapping[str, Any]] = (),
    reasoning_effort: str | None = None,
) -> list[Event]:
    """``response.completed``; ``output=[]`` or ``None`` imitate backends that leave it empty.

    ``usage`` defaults to :func:`usage_for` of ``output``.
    """
    response = response_object(
        "completed",
        output=output,
        usage=usage if usage is not None else usage_for(output),
        tools=tools,
        reasoning_effort=reasoning_effort,
    )
    return [{"type": "response.completed", "response": response}]


def incomplete(
    reason: Literal["max_output_tokens", "content_filter"],
    output: Sequence[Mapping[str, Any]] = (),
    *,
    tools: Sequence[Mapping[str, Any]] = (),
    reasoning_effort: str | None = None,
) -> list[Event]:
    """``response.incomplete`` with ``incomplete_details.reason``."""
    response = response_object(
        "incomplete",
        output=output,
        usage=usage_for(output),
        incomplete_details={"reason": reason},
        tools=tools,
        reasoning_effort=reasoning_effort,
    )
    return [{"type": "response.incomplete", "response": response}]


def failed(
    code: str,
    message: str | None = None,
    output: Sequence[Mapping[str, Any]] = (),
    *,
    tools: Sequence[Mapping[str, Any]] = (),
    reasoning_effort: str | None = None,
) -> list[Event]:
    """``response.failed`` with ``error: {code, message}``; ``message`` defaults to the provider's
    wording in :data:`FAILURE_MESSAGES`."""
    text = message if message is not None else FAILURE_MESSAGES.get(code, f"Request failed: {code}")
    response = response_object(
        "failed",
        output=output,
        error={"code": code, "message": text},
        tools=tools,
        reasoning_effort=reasoning_effort,
    )
    return [{"type": "response.failed", "response": response}]


# --------------------------------------------------------------------------------------------
# Builders: output items


#: A content part a message streams: its kind ("output_text" or "refusal"), its whole text, and
#: how many deltas carry it.
MessagePart = tuple[Literal["output_text", "refusal"], str, int]

#: Per kind of content part: the field holding its text, and the event types that stream it.
_PART_FIELDS: Final[Mapping[str, tuple[str, str]]] = {
    "output_text": ("text", "response.output_text"),
    "refusal": ("refusal", "response.refusal"),
}


def _content_part(kind: str, text: str) -> Event:
    if kind == "refusal":
        return {"type": "refusal", "refusal": text}
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def message(
    parts: Sequence[MessagePart],
    *,
    output_index: int = 0,
    item_id: str | None = None,
    status: Literal["completed", "incomplete"] = "completed",
    finished: bool = True,
    phase: Literal["commentary", "final_answer"] | None = None,
) -> list[Event]:
    """An assistant message whose content parts stream one after the other: each part's
    `content_part.added`, its deltas (`response.output_text.delta`, or `response.refusal.delta`
    for a refusal), its `*.done` and `content_part.done`; then `output_item.done`.

    ``phase`` labels the message (``"commentary"``: a preamble; ``"final_answer"``) on its
    ``output_item.added`` and ``.done``. ``finished=False`` stops after the last part's deltas
    (no ``*.done`` events), as a cut-off stream does. ``status`` is the final status of the item
    (``"incomplete"`` before ``response.incomplete``)."""
    item_id = item_id or f"msg_{output_index:02d}_sim"
    labelled = {"phase": phase} if phase is not None else {}
    where = {"item_id": item_id, "output_index": output_index}
    events: list[Event] = [
        {
            "type": "response.output_item.added",
            "output_index": output_index,
            "item": {
                "id": item_id,
                "type": "message",
                "status": "in_progress",
                "content": [],
                "role": "assistant",
                **labelled,
            },
        },
    ]
    done_parts: list[Event] = []
    for content_index, (kind, text, deltas) in enumerate(parts):
        field, streamed = _PART_FIELDS[kind]
        at = {**where, "content_index": content_index}
        logprobs: dict[str, list[Any]] = {"logprobs": []} if kind == "output_text" else {}
        events.append({"type": "response.content_part.added", **at,
                       "part": _content_part(kind, "")})
        events.extend(
            {"type": f"{streamed}.delta", **at, "delta": piece, **logprobs}
            for piece in split_text(text, deltas)
        )
        if not finished and content_index == len(parts) - 1:
            return events
        done_parts.append(_content_part(kind, text))
        events += [
            {"type": f"{streamed}.done", **at, field: text, **logprobs},
            {"type": "response.content_part.done", **at, "part": done_parts[-1]},
        ]
    events.append(
        {
            "type": "response.output_item.done",
            "output_index": output_index,
            "item": {
                "id": item_id,
                "type": "message",
                "status": status,
                "content": [dict(part) for part in done_parts],
                "role": "assistant",
                **labelled,
            },
        }
    )
    return events


def text_message(
    text: str,
    *,
    deltas: int = 3,
    output_index: int = 0,
    item_id: str | None = None,
    status: Literal["completed", "incomplete"] = "completed",
    finished: bool = True,
    phase: Literal["commentary", "final_answer"] | None = None,
) -> list[Event]:
    """An assistant message streamed as ``deltas`` text deltas (see :func:`message`)."""
    return message(
        [("output_text", text, deltas)], output_index=output_index, item_id=item_id,
        status=status, finished=finished, phase=phase,
    )


def refusal_message(
    refusal: str,
    *,
    deltas: int = 2,
    text: str | None = None,
    output_index: int = 0,
    item_id: str | None = None,
    phase: Literal["commentary", "final_answer"] | None = None,
) -> list[Event]:
    """An assistant message that refuses: a ``refusal`` content part streamed as
    ``response.refusal.delta`` events, after an answer ``text`` part when one is given (a model
    that began to answer and then refused)."""
    parts: list[MessagePart] = [("output_text", text, 2)] if text is not None else []
    return message(
        [*parts, ("refusal", refusal, deltas)], output_index=output_index, item_id=item_id,
        phase=phase,
    )


def reasoning_summary(
    summary: str,
    *,
    deltas: int = 2,
    output_index: int = 0,
    item_id: str | None = None,
) -> list[Event]:
    """A reasoning item whose summary streams as ``response.reasoning_summary_text.delta``."""
    item_id = item_id or f"rs_{output_index:02d}_sim"
    events: list[Event] = [
        {
            "type": "response.output_item.added",
            "output_index": output_index,
            "item": {"id": item_id, "type": "reasoning", "summary": []},
        },
        {
            "type": "response.reasoning_summary_part.added",
            "item_id": item_id,
            "output_index": output_index,
            "summary_index": 0,
            "part": {"type": "summary_text", "text": ""},
        },
    ]
    events.extend(
        {
            "type": "response.reasoning_summary_text.delta",
            "item_id": item_id,
            "output_index": output_index,
            "summary_index": 0,
            "delta": piece,
        }
        for piece in split_text(summary, deltas)
    )
    events += [
        {
            "type": "response.reasoning_summary_text.done",
            "item_id": item_id,
            "output_index": output_index,
            "summary_index": 0,
            "text": summary,
        },
        {
            "type": "response.reasoning_summary_part.done",
            "item_id": item_id,
            "output_index": output_index,
            "summary_index": 0,
            "part": {"type": "summary_text", "text": summary},
        },
        {
            "type": "response.output_item.done",
            "output_index": output_index,
            "item": {
                "id": item_id,
                "type": "reasoning",
                "summary": [{"type": "summary_text", "text": summary}],
            },
        },
    ]
    return events


def _call_ids(
    prefix: str, output_index: int, item_id: str | None, call_id: str | None
) -> tuple[str, str]:
    """A call item's ``id`` and ``call_id``: the ones given, else fixed ones derived from its
    output index (the ``id`` after the item type's ``prefix``)."""
    return item_id or f"{prefix}_{output_index:02d}_sim", call_id or f"call_{output_index:02d}_sim"


def function_call(
    name: str,
    arguments: str,
    *,
    deltas: int = 3,
    output_index: int = 0,
    item_id: str | None = None,
    call_id: str | None = None,
    finished: bool = True,
) -> list[Event]:
    """A ``function_call`` item whose ``arguments`` (a JSON string) stream as ``deltas`` pieces.

    ``finished=False`` leaves out ``function_call_arguments.done`` and ``output_item.done``, as
    backends that jump from the last delta to ``response.completed`` do.
    """
    item_id, call_id = _call_ids("fc", output_index, item_id, call_id)

    def item(status: str, args: str) -> Event:
        return {
            "id": item_id,
            "type": "function_call",
            "status": status,
            "arguments": args,
            "call_id": call_id,
            "name": name,
        }

    return _streamed_item(
        output_index, item_id, "function_call_arguments", "arguments", arguments, deltas, finished,
        added=item("in_progress", ""), done=item("completed", arguments),
    )


def custom_tool_call(
    name: str,
    text: str,
    *,
    deltas: int = 3,
    output_index: int = 0,
    item_id: str | None = None,
    call_id: str | None = None,
    finished: bool = True,
) -> list[Event]:
    """A ``custom_tool_call`` item (a freeform tool: its ``input`` is raw text, not JSON) whose
    input streams as ``deltas`` ``response.custom_tool_call_input.delta`` pieces.

    ``finished=False`` stops after the deltas, as a cut-off stream does. The item has no
    ``status`` field (the SDK's ``ResponseCustomToolCall`` declares none).
    """
    item_id, call_id = _call_ids("ctc", output_index, item_id, call_id)

    def item(value: str) -> Event:
        return {"id": item_id, "type": "custom_tool_call", "call_id": call_id, "name": name,
                "input": value}

    return _streamed_item(
        output_index, item_id, "custom_tool_call_input", "input", text, deltas, finished,
        added=item(""), done=item(text),
    )


def _streamed_item(
    output_index: int,
    item_id: str,
    frame: str,
    field: str,
    value: str,
    deltas: int,
    finished: bool,
    *,
    added: Event,
    done: Event,
) -> list[Event]:
    """An item announced as `added`, its `field` streamed as `deltas` `response.<frame>.delta`
    pieces, then (`finished`) `response.<frame>.done` with the whole value and the item `done`."""
    events: list[Event] = [
        {"type": "response.output_item.added", "output_index": output_index, "item": added}
    ]
    events.extend(
        {
            "type": f"response.{frame}.delta",
            "item_id": item_id,
            "output_index": output_index,
            "delta": piece,
        }
        for piece in split_text(value, deltas)
    )
    if finished:
        events += [
            {
                "type": f"response.{frame}.done",
                "item_id": item_id,
                "output_index": output_index,
                field: value,
            },
            {"type": "response.output_item.done", "output_index": output_index, "item": done},
        ]
    return events


def _added_and_done(output_index: int, item: Callable[[str], Event]) -> list[Event]:
    return [
        {"type": "response.output_item.added", "output_index": output_index,
         "item": item("in_progress")},
        {"type": "response.output_item.done", "output_index": output_index,
         "item": item("completed")},
    ]


def local_shell_call(
    command: Sequence[str],
    *,
    working_directory: str = "/home/user/project",
    output_index: int = 0,
    item_id: str | None = None,
    call_id: str | None = None,
) -> list[Event]:
    """A ``local_shell_call`` item (the ``local_shell`` tool: the client runs ``command``),
    announced and finished; its ``action`` is an ``exec`` action."""
    item_id, call_id = _call_ids("lsh", output_index, item_id, call_id)

    def item(status: str) -> Event:
        return {
            "id": item_id,
            "type": "local_shell_call",
            "call_id": call_id,
            "action": {
                "type": "exec",
                "command": list(command),
                "env": {},
                "timeout_ms": 10000,
                "user": None,
                "working_directory": working_directory,
            },
            "status": status,
        }

    return _added_and_done(output_index, item)


def local_shell_call_output(call_id: str, output: str, *, output_index: int) -> list[Event]:
    """A ``local_shell_call_output`` item: the output of the local shell call ``call_id``, which
    it names by its ``id`` (the SDK's ``LocalShellCallOutput`` has no ``call_id`` field)."""

    def item(status: str) -> Event:
        return {"id": call_id, "type": "local_shell_call_output", "output": output,
                "status": status}

    return _added_and_done(output_index, item)


def shell_call(
    commands: Sequence[str],
    *,
    environment: Mapping[str, Any] | None = None,
    deltas: int = 2,
    output_index: int = 0,
    item_id: str | None = None,
    call_id: str | None = None,
    finished: bool = True,
) -> list[Event]:
    """A ``shell_call`` item (the ``shell`` tool) whose commands stream as
    ``response.shell_call_command.added`` / ``.delta`` (``deltas`` pieces each) / ``.done``.

    ``environment`` is where it runs: ``{"type": "local"}`` (the client's machine, the default) or
    a ``container_reference`` (hosted: the server runs it and reports a ``shell_call_output``).
    ``finished=False`` stops after the command frames."""
    item_id, call_id = _call_ids("sh", output_index, item_id, call_id)

    def item(status: str, streamed: Sequence[str]) -> Event:
        return {
            "id": item_id,
            "type": "shell_call",
            "call_id": call_id,
            "action": {"commands": list(streamed), "timeout_ms": 120000,
                       "max_output_length": 4096},
            "environment": dict(environment) if environment is not None else {"type": "local"},
            "status": status,
        }

    events: list[Event] = [
        {"type": "response.output_item.added", "output_index": output_index,
         "item": item("in_progress", [])}
    ]
    for index, command in enumerate(commands):
        events.append({"type": "response.shell_call_command.added", "output_index": output_index,
                       "command_index": index, "command": ""})
        events.extend(
            {"type": "response.shell_call_command.delta", "output_index": output_index,
             "command_index": index, "delta": piece}
            for piece in split_text(command, deltas)
        )
        events.append({"type": "response.shell_call_command.done", "output_index": output_index,
                       "command_index": index, "command": command})
    if finished:
        events.append({"type": "response.output_item.done", "output_index": output_index,
                       "item": item("completed", commands)})
    return events


def shell_call_output(
    call_id: str,
    results: Sequence[tuple[str, str, int]],
    *,
    output_index: int,
    item_id: str | None = None,
) -> list[Event]:
    """A ``shell_call_output`` item: what a hosted shell call ``call_id`` printed, one
    ``(stdout, stderr, exit_code)`` per command, streamed as
    ``response.shell_call_output_content.delta`` / ``.done`` per command."""
    item_id = item_id or f"sho_{output_index:02d}_sim"
    outputs = [
        {"stdout": stdout, "stderr": stderr, "outcome": {"type": "exit", "exit_code": code}}
        for stdout, stderr, code in results
    ]

    def item(status: str, contents: list[Event]) -> Event:
        return {"id": item_id, "type": "shell_call_output", "call_id": call_id,
                "max_output_length": 4096, "output": contents, "status": status}

    events: list[Event] = [
        {"type": "response.output_item.added", "output_index": output_index,
         "item": item("in_progress", [])}
    ]
    for index, output in enumerate(outputs):
        events += [
            {"type": "response.shell_call_output_content.delta", "item_id": item_id,
             "output_index": output_index, "command_index": index,
             "delta": {"stdout": output["stdout"], "stderr": output["stderr"]}},
            {"type": "response.shell_call_output_content.done", "item_id": item_id,
             "output_index": output_index, "command_index": index, "output": [output]},
        ]
    events.append({"type": "response.output_item.done", "output_index": output_index,
                   "item": item("completed", outputs)})
    return events


def apply_patch_call(
    operation: Mapping[str, Any],
    *,
    output_index: int = 0,
    item_id: str | None = None,
    call_id: str | None = None,
) -> list[Event]:
    """An ``apply_patch_call`` item (the ``apply_patch`` tool) carrying one file ``operation``
    (``create_file`` / ``update_file`` with a ``diff``, or ``delete_file``), announced and
    finished."""
    item_id, call_id = _call_ids("apc", output_index, item_id, call_id)

    def item(status: str) -> Event:
        return {"id": item_id, "type": "apply_patch_call", "call_id": call_id,
                "operation": dict(operation), "status": status}

    return _added_and_done(output_index, item)


def apply_patch_call_output(
    call_id: str, output: str, *, output_index: int, item_id: str | None = None
) -> list[Event]:
    """An ``apply_patch_call_output`` item: the result of applying the patch of ``call_id``."""
    item_id = item_id or f"apco_{output_index:02d}_sim"
    item = {"id": item_id, "type": "apply_patch_call_output", "call_id": call_id,
            "status": "completed", "output": output}
    return [
        {"type": "response.output_item.added", "output_index": output_index, "item": dict(item)},
        {"type": "response.output_item.done", "output_index": output_index, "item": dict(item)},
    ]


def output_items(*pieces: Iterable[StreamPart]) -> list[Event]:
    """The items of every ``response.output_item.done`` event in ``pieces``, by output index:
    the ``output`` a terminal event carries after streaming them."""
    done: list[tuple[int, int, Event]] = []
    for piece in pieces:
        for part in piece:
            if isinstance(part, dict) and part.get("type") == "response.output_item.done":
                done.append((int(part["output_index"]), len(done), dict(part["item"])))
    return [item for _, _, item in sorted(done, key=lambda entry: entry[:2])]


# --------------------------------------------------------------------------------------------
# How relays pass a message on (applied to a builder's events)


def phase_only_on_done(events: Iterable[Event]) -> list[Event]:
    """The events with the ``phase`` left out of ``output_item.added``: a relay that states a
    message's phase only when the message is done."""
    out: list[Event] = []
    for event in events:
        item = event.get("item")
        if event.get("type") == "response.output_item.added" and isinstance(item, dict):
            event = {**event, "item": {k: v for k, v in item.items() if k != "phase"}}
        out.append(dict(event))
    return out


def without_item_added(events: Iterable[Event]) -> list[Event]:
    """The events without ``output_item.added`` and ``content_part.added``, and the frames that
    stream content addressed by ``item_id`` only (no ``output_index``): a relay that passes on
    the deltas and the finished item, nothing else."""
    out: list[Event] = []
    for event in events:
        kind = event.get("type")
        if kind in ("response.output_item.added", "response.content_part.added"):
            continue
        if kind != "response.output_item.done" and "item_id" in event:
            event = {k: v for k, v in event.items() if k != "output_index"}
        out.append(dict(event))
    return out


def rotating_item_ids(events: Iterable[Event]) -> list[Event]:
    """The events with a new ``item_id`` on every frame that streams content, the
    ``output_index`` unchanged: a relay that gives the same item a new id mid-stream."""
    out: list[Event] = []
    for number, event in enumerate(events):
        if "item_id" in event:
            event = {**event, "item_id": f"{event['item_id']}_r{number}"}
        out.append(dict(event))
    return out


# --------------------------------------------------------------------------------------------
# Builders: non-standard frames seen in the wild


def rate_limits_frame(
    *, used_percent: float = 12.0, window_minutes: int = 300, resets_in_seconds: int = 1200
) -> list[Event]:
    """``codex.rate_limits``, sent by Codex load-balancer relays before ``response.created``."""
    return [
        {
            "type": "codex.rate_limits",
            "rate_limits": {
                "primary": {
                    "used_percent": used_percent,
                    "window_minutes": window_minutes,
                    "resets_in_seconds": resets_in_seconds,
                }
            },
        }
    ]


def response_metadata_frame() -> list[Event]:
    """``codex.response.metadata``, an unknown vendor frame carrying upstream headers."""
    return [{"type": "codex.response.metadata", "headers": {"x-request-id": "req_sim_upstream"}}]


def websocket_timing_frame() -> list[Event]:
    """``responsesapi.websocket_timing``, an unknown telemetry frame some relays pass through."""
    return [
        {
            "type": "responsesapi.websocket_timing",
            "timing_metrics": {"engine_service_ttft_total_ms": 233, "engine_service_total_ms": 457},
        }
    ]


def error_frame(message: str, code: str | None, *, param: str | None = None) -> list[Event]:
    """An ``error`` event with top-level ``code``/``message``/``param`` (the documented shape)."""
    return [{"type": "error", "code": code, "message": message, "param": param}]


def nested_error_frame(
    message: str, *, type: str, code: str | None, param: str | None = None
) -> list[Event]:
    """An ``error`` event with the error nested: ``{"type": "error", "error": {...}}``."""
    return [
        {
            "type": "error",
            "error": {"type": type, "code": code, "message": message, "param": param},
        }
    ]


@functools.lru_cache(maxsize=32)
def nested_json(depth: int, bottom: bytes = b'"bottom"') -> bytes:
    """JSON text nested `depth` levels deep, lists and objects by turns, around `bottom`, written
    by hand: orjson refuses to write 255 levels or more, the standard library 1000 (and reads
    more than 1024 only with a raised recursion limit)."""
    opening: list[bytes] = []
    closing: list[bytes] = []
    for level in reversed(range(depth)):  # the outermost level first
        opening.append(b'{"level":%d,"inner":' % level if level % 2 else b"[")
        closing.append(b"}" if level % 2 else b"]")
    return b"".join(opening) + bottom + b"".join(reversed(closing))


# --------------------------------------------------------------------------------------------
# The shapes

_ANSWER: Final = "The capital of France is Paris. It has been the capital since 987."
_PREAMBLE: Final = "I'll check the weather service for Paris before I answer."
_REFUSAL: Final = "I'm sorry, but I can't help with that request."
_BEGUN_ANSWER: Final = "Here is an overview of the steps. "
_REASONING: Final = "The user asks for a capital city; answer directly with one fact."
_WEATHER_ARGS: Final = '{"city":"Paris","unit":"celsius"}'
_TIME_ARGS: Final = '{"timezone":"Europe/Paris"}'
_UTF8_ANSWER: Final = "Grüße aus Köln — naïve café, 東京タワー 🚀 and Ωmega ∑ ok."
_ENTITLEMENT_MESSAGE: Final = (
    "The account signed in with OAuth is not entitled to use model grok-4 on its current plan. "
    "Upgrade the subscription or sign in with an API key."
)
_TIME_TOOL: Final[Mapping[str, Any]] = {
    "type": "function",
    "name": "get_time",
    "description": "Current local time in a timezone.",
    "parameters": {
        "type": "object",
        "properties": {"timezone": {"type": "string"}},
        "required": ["timezone"],
        "additionalProperties": False,
    },
    "strict": True,
}


#: Codex's freeform `apply_patch` tool: a custom tool whose input is a patch (a Lark grammar).
APPLY_PATCH_TOOL: Final[Mapping[str, Any]] = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Use the `apply_patch` tool to edit files.",
    "format": {
        "type": "grammar",
        "syntax": "lark",
        "definition": 'start: "*** Begin Patch" LF hunk+ "*** End Patch" LF?',
    },
}
_PATCH: Final = (
    "*** Begin Patch\n"
    "*** Update File: src/app.py\n"
    "@@ def greet(name):\n"
    "-    return 'Hello ' + name\n"
    "+    return f'Hello, {name}!'\n"
    "*** End Patch\n"
)
_DIFF: Final = "@@ def greet(name):\n-    return 'Hello ' + name\n+    return f'Hello, {name}!'\n"
_PATCH_OPERATION: Final[Mapping[str, Any]] = {
    "type": "update_file", "path": "src/app.py", "diff": _DIFF,
}
#: The searches xAI runs on its side and reports as custom tool calls the request never declared.
_SERVER_SEARCHES: Final = (
    ("web_search", '{"query":"capital of France","num_results":5}'),
    ("browse_page", '{"url":"https://en.wikipedia.org/wiki/Paris"}'),
)
_LOCAL_COMMAND: Final = ("ls", "-la", "src")
_SHELL_COMMANDS: Final = ("git status --short", "python -m pytest -q")
_HOSTED_COMMAND: Final = "python -c 'print(6 * 7)'"
_HOSTED_ANSWER: Final = "The script printed 42."
_PATCHED_ANSWER: Final = "I updated greet() in src/app.py to use an f-string."
_LISTED_ANSWER: Final = "The src folder holds app.py and __init__.py."
_LOCAL_SHELL_OUTPUT: Final = '{"output":"app.py\\n__init__.py\\n","metadata":{"exit_code":0}}'
_CONTAINER: Final[Mapping[str, Any]] = {"type": "container_reference", "container_id": "cntr_sim_01"}


def _whole_response(
    *items: list[Event],
    tools: Sequence[Mapping[str, Any]] = (),
    reasoning_effort: str | None = None,
) -> list[StreamPart]:
    """A response that streams `items` (builder results) whole: created and in_progress, the
    items, then completed with their output; every lifecycle event declares `tools`."""
    return assemble(
        created(tools=tools, reasoning_effort=reasoning_effort),
        in_progress(tools=tools, reasoning_effort=reasoning_effort),
        *items,
        completed(output_items(*items), tools=tools, reasoning_effort=reasoning_effort),
    )


def _output_left_out(output: list[Event] | None, *items: list[Event]) -> list[StreamPart]:
    """A response that streams `items`, then completes with `output` (`[]` or None) in their place,
    its usage counted from them (the ChatGPT Codex backend)."""
    return assemble(
        created(), in_progress(), *items,
        completed(output, usage=usage_for(output_items(*items))),
    )


def _happy_text_events(text: str = _ANSWER, *, deltas: int = 4) -> list[StreamPart]:
    return _whole_response(text_message(text, deltas=deltas))


def _happy_reply() -> Reply:
    return to_reply(_happy_text_events())


def _interrupted_start() -> list[StreamPart]:
    """The first events of an answer that gets cut off: created and two of four deltas."""
    partial = text_message(_ANSWER, deltas=4, finished=False)[:4]
    return assemble(created(), in_progress(), partial)


def _with_server_headers(reply: Reply) -> Reply:
    """A streamed reply with the headers a real server sends on success (a reply that sets any
    header of its own keeps its own set)."""
    if reply.body is not None or reply.headers:
        return reply
    return attrs.evolve(reply, headers=SUCCESS_HEADERS)


def _script(name: str, description: str, *replies: Reply) -> Script:
    served = tuple(_with_server_headers(reply) for reply in replies)
    return Script(replies=served, name=name, description=description)


def _failed_shape(code: str, *, partial_text: str | None = None) -> list[StreamPart]:
    if partial_text is None:
        return assemble(created(), in_progress(), failed(code))
    message = text_message(partial_text, deltas=2, finished=False)
    return assemble(created(), in_progress(), message, failed(code))


def _build_shapes() -> dict[str, Script]:
    scripts: list[Script] = []
    add = scripts.append

    add(_script("happy_text", "A plain text answer in four deltas, then response.completed.",
                _happy_reply()))

    reasoning = reasoning_summary(_REASONING, deltas=3, output_index=0)
    answer = text_message(_ANSWER, deltas=3, output_index=1)
    add(_script(
        "reasoning_then_text",
        "A reasoning item with a streamed summary, then the text answer, then completed.",
        to_reply(_whole_response(reasoning, answer, reasoning_effort="medium")),
    ))

    call = function_call("get_weather", _WEATHER_ARGS, deltas=3)
    add(_script(
        "function_call",
        "One function call with streamed argument deltas, then completed with the call.",
        to_reply(_whole_response(call, tools=[WEATHER_TOOL])),
    ))

    tools = [WEATHER_TOOL, _TIME_TOOL]
    first = function_call("get_weather", _WEATHER_ARGS, deltas=2, output_index=0)
    second = function_call("get_time", _TIME_ARGS, deltas=2, output_index=1)
    add(_script(
        "parallel_function_calls",
        "Two function calls in one response, each with argument deltas, then completed.",
        to_reply(_whole_response(first, second, tools=tools)),
    ))

    message = text_message(_ANSWER, deltas=3)
    add(_script(
        "relay_in_progress_first",
        "A relay that starts with response.in_progress and never sends response.created.",
        to_reply(assemble(in_progress(), message, completed(output_items(message)))),
    ))

    add(_script(
        "rate_limits_before_created",
        "A codex.rate_limits frame before response.created, then a normal text answer.",
        to_reply(assemble(rate_limits_frame(), _whole_response(message))),
    ))

    add(_script(
        "error_first_top_level",
        "An error frame as the very first frame, with top-level message/code (xAI entitlement).",
        to_reply(assemble(error_frame(_ENTITLEMENT_MESSAGE, "permission_denied"))),
    ))

    add(_script(
        "error_first_nested",
        "An error frame as the very first frame, with the error nested under 'error'.",
        to_reply(assemble(nested_error_frame(
            _ENTITLEMENT_MESSAGE, type="permission_error", code="permission_denied"
        ))),
    ))

    reasoning = reasoning_summary(_REASONING, deltas=2, output_index=0)
    answer = text_message(_ANSWER, deltas=3, output_index=1)
    add(_script(
        "completed_output_empty",
        "Items and deltas stream normally, but response.completed carries output: [].",
        to_reply(_output_left_out([], reasoning, answer)),
    ))
    add(_script(
        "completed_output_null",
        "Items and deltas stream normally, but response.completed carries output: null.",
        to_reply(_output_left_out(None, reasoning, answer)),
    ))

    unfinished = function_call("get_weather", _WEATHER_ARGS, deltas=3, finished=False)
    add(_script(
        "function_call_without_item_done",
        "A function call added with argument deltas but no output_item.done; completed has "
        "output: [].",
        to_reply(assemble(
            created(tools=[WEATHER_TOOL]), in_progress(tools=[WEATHER_TOOL]), unfinished,
            completed([], tools=[WEATHER_TOOL]),
        )),
    ))

    cut = text_message("The capital of France is Paris. It has", deltas=3, status="incomplete")
    add(_script(
        "incomplete_max_output_tokens",
        "The answer stops at the token limit: response.incomplete, reason max_output_tokens.",
        to_reply(assemble(
            created(), in_progress(), cut, incomplete("max_output_tokens", output_items(cut))
        )),
    ))
    filtered = text_message("Here is how", deltas=2, status="incomplete")
    add(_script(
        "incomplete_content_filter",
        "The answer is cut by moderation: response.incomplete, reason content_filter.",
        to_reply(assemble(
            created(), in_progress(), filtered,
            incomplete("content_filter", output_items(filtered)),
        )),
    ))

    for code, partial_text, description in (
        ("server_error", "The capital of",
         "Some text streams, then response.failed with code server_error."),
        ("rate_limit_exceeded", None,
         "response.failed with code rate_limit_exceeded and 'Please try again in 20s.'"),
        ("context_length_exceeded", None,
         "response.failed with code context_length_exceeded right after response.created."),
        ("insufficient_quota", None,
         "response.failed with code insufficient_quota right after response.created."),
    ):
        add(_script(f"failed_{code}", description,
                    to_reply(_failed_shape(code, partial_text=partial_text))))

    message = text_message(_ANSWER, deltas=4)
    deltas_at = [i for i, e in enumerate(message) if e["type"] == "response.output_text.delta"]
    noisy_message: list[StreamPart] = list(message)
    noisy_message.insert(deltas_at[2], Data('{"type":"response.output_text.delta","delta":"Pa',
                                            event="response.output_text.delta"))
    noisy_message.insert(deltas_at[1], KEEPALIVE)
    add(_script(
        "noisy_but_fine",
        "Keepalive comments, unknown codex.*/responsesapi.* frames, one undecodable data line "
        "and a trailing data: [DONE] around an otherwise normal answer.",
        to_reply(assemble(
            KEEPALIVE, created(), KEEPALIVE, in_progress(), response_metadata_frame(),
            noisy_message, websocket_timing_frame(), completed(output_items(message)), DONE,
        )),
    ))

    utf8_message = text_message(_UTF8_ANSWER, deltas=5)
    add(_script(
        "crlf_split_chunks",
        "CRLF line endings, multi-byte UTF-8 text, and 7-byte chunks that split lines, CRLF "
        "pairs and characters.",
        to_reply(_whole_response(utf8_message), chunking=7, crlf=True),
    ))

    add(_script(
        "drop_then_retry",
        "Attempt 1 drops the connection mid-answer (incomplete chunked body); attempt 2 is good.",
        to_reply([*_interrupted_start(), TransportFault(Fault.DROP)]),
        _happy_reply(),
    ))

    partial = text_message(_ANSWER, deltas=4)
    add(_script(
        "stall_then_retry",
        f"Attempt 1 goes silent for {STALL_SECONDS:g}s mid-answer with the socket open, then "
        "finishes; attempt 2 is good.",
        to_reply(assemble(
            created(), in_progress(), partial[:4], Stall(STALL_SECONDS), partial[4:],
            completed(output_items(partial)),
        )),
        _happy_reply(),
    ))

    add(_script(
        "eof_then_retry",
        "Attempt 1 ends cleanly mid-answer without any terminal event; attempt 2 is good.",
        to_reply(_interrupted_start()),
        _happy_reply(),
    ))

    error_500 = http_error(
        500, "The server had an error while processing your request. Sorry about that!",
        type="server_error", code=None,
    )
    add(_script("http_500", "HTTP 500 with an OpenAI-shaped error body, on every attempt.",
                *([error_500] * 3)))
    error_429 = http_error(
        429,
        "Rate limit reached for gpt-5 in organization org-simulator on tokens per min (TPM): "
        "Limit 30000, Used 29400, Requested 1850. Please try again in 20s. Visit "
        "https://platform.openai.com/account/rate-limits to learn more.",
        type="tokens", code="rate_limit_exceeded",
        headers=RATE_LIMITED_HEADERS,
    )
    add(_script("http_429", "HTTP 429 rate limit with an OpenAI-shaped error body, on every "
                "attempt.", *([error_429] * 3)))
    error_503 = http_error(
        503, "The engine is currently overloaded, please try again later.",
        type="server_error", code=None, headers=(("retry-after-ms", "50"),),
    )
    add(_script("http_503_then_ok", "HTTP 503 asking for a 50 ms wait, twice, then a good "
                "answer: retried by the engine's HTTP retry budget.",
                error_503, error_503, _happy_reply()))
    error_401 = http_error(
        401,
        "Incorrect API key provided: sk-test. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        type="invalid_request_error", code="invalid_api_key",
    )
    add(_script("http_401", "HTTP 401 invalid API key with an OpenAI-shaped error body, on "
                "every attempt.", *([error_401] * 3)))

    # -- calls besides function calls: the client's, and the same kinds run by the server ----
    tools = [APPLY_PATCH_TOOL]
    patch = custom_tool_call("apply_patch", _PATCH, deltas=4)
    add(_script(
        "custom_tool_call",
        "A Codex freeform apply_patch: a custom_tool_call whose raw input streams as "
        "custom_tool_call_input deltas, then completed.",
        to_reply(_whole_response(patch, tools=tools)),
    ))

    tools = [{"type": "web_search"}]
    searches = [
        custom_tool_call(name, text, deltas=1, output_index=index)
        for index, (name, text) in enumerate(_SERVER_SEARCHES)
    ]
    answer = text_message(_ANSWER, deltas=3, output_index=len(searches))
    add(_script(
        "custom_tool_call_server_side",
        "xAI-style server-side searches reported as custom_tool_call items the request never "
        "declared as custom tools, then the answer text, then completed.",
        to_reply(_whole_response(*searches, answer, tools=tools)),
    ))

    cut = custom_tool_call("apply_patch", _PATCH, deltas=4, finished=False)[:3]
    dropped_call = to_reply([
        *assemble(created(tools=[APPLY_PATCH_TOOL]), in_progress(tools=[APPLY_PATCH_TOOL]), cut),
        TransportFault(Fault.DROP),
    ])
    add(_script(
        "custom_tool_call_dropped",
        "Every attempt (three) drops while a custom tool call's input streams: the call is "
        "kept, incomplete.",
        dropped_call, dropped_call, dropped_call,
    ))

    tools = [{"type": "local_shell"}]
    local = local_shell_call(_LOCAL_COMMAND)
    add(_script(
        "local_shell_call",
        "A Codex local_shell_call (an exec action for the client to run), then completed.",
        to_reply(_whole_response(local, tools=tools)),
    ))
    ran = local_shell_call_output("call_00_sim", _LOCAL_SHELL_OUTPUT, output_index=1)
    answer = text_message(_LISTED_ANSWER, deltas=3, output_index=2)
    add(_script(
        "local_shell_call_with_output",
        "A local_shell_call followed in the same response by its local_shell_call_output (run "
        "by the server), then the answer text, then completed.",
        to_reply(_whole_response(local, ran, answer, tools=tools)),
    ))

    tools = [{"type": "shell", "environment": {"type": "local"}}]
    shell = shell_call(_SHELL_COMMANDS)
    add(_script(
        "shell_call",
        "A shell_call for the client's local environment, its commands streamed as "
        "shell_call_command frames, then completed.",
        to_reply(_whole_response(shell, tools=tools)),
    ))

    tools = [{"type": "shell", "environment": {"type": "container_auto"}}]
    hosted = shell_call([_HOSTED_COMMAND], environment=_CONTAINER)
    printed = shell_call_output("call_00_sim", [("42\n", "", 0)], output_index=1)
    answer = text_message(_HOSTED_ANSWER, deltas=3, output_index=2)
    add(_script(
        "shell_call_hosted",
        "A hosted shell: a shell_call run in a container, its shell_call_output in the same "
        "response, then the answer text, then completed.",
        to_reply(_whole_response(hosted, printed, answer, tools=tools)),
    ))

    tools = [{"type": "apply_patch"}]
    patch_call = apply_patch_call(_PATCH_OPERATION)
    add(_script(
        "apply_patch_call",
        "An apply_patch_call with an update_file operation for the client to apply, then "
        "completed.",
        to_reply(_whole_response(patch_call, tools=tools)),
    ))
    applied = apply_patch_call_output("call_00_sim", "Updated src/app.py", output_index=1)
    answer = text_message(_PATCHED_ANSWER, deltas=3, output_index=2)
    add(_script(
        "apply_patch_call_with_output",
        "An apply_patch_call followed in the same response by its apply_patch_call_output "
        "(applied by the server), then the answer text, then completed.",
        to_reply(_whole_response(patch_call, applied, answer, tools=tools)),
    ))

    # -- what an answer is made of: commentary, the final answer, refusals ---------------------
    preamble = text_message(_PREAMBLE, deltas=3, output_index=0, phase="commentary")
    weather = function_call("get_weather", _WEATHER_ARGS, deltas=2, output_index=1)
    add(_script(
        "commentary_then_tool_call",
        "A commentary message (phase: commentary, a preamble) before a function call, then "
        "completed.",
        to_reply(_whole_response(preamble, weather, tools=[WEATHER_TOOL])),
    ))
    final = text_message(_ANSWER, deltas=3, output_index=1, phase="final_answer")
    add(_script(
        "commentary_then_answer",
        "A commentary message, then the final answer (phase: final_answer), then completed.",
        to_reply(_whole_response(preamble, final)),
    ))
    add(_script(
        "commentary_phase_only_on_done",
        "A relay that states each message's phase only on output_item.done: the commentary "
        "streams as answer text, and the result still files it as commentary.",
        to_reply(_whole_response(phase_only_on_done(preamble), phase_only_on_done(final))),
    ))
    add(_script(
        "commentary_without_item_added",
        "A relay that sends no output_item.added or content_part.added and addresses deltas by "
        "item_id only; each message's phase comes with its output_item.done.",
        to_reply(_whole_response(without_item_added(preamble), without_item_added(final))),
    ))
    add(_script(
        "commentary_rotating_item_ids",
        "A relay that gives every frame of a message a new item_id while its output_index "
        "stays: the commentary is still told from the answer.",
        to_reply(_whole_response(rotating_item_ids(preamble), rotating_item_ids(final))),
    ))
    add(_script(
        "commentary_completed_output_empty",
        "Commentary and answer stream normally, but response.completed carries output: []: the "
        "rebuilt output keeps each message's phase.",
        to_reply(_output_left_out([], preamble, final)),
    ))
    add(_script(
        "commentary_drop_then_retry",
        "Attempt 1 drops in the middle of the commentary; attempt 2 says it again, then "
        "answers: nothing is delivered twice.",
        to_reply([*assemble(created(), in_progress(), preamble[:4]), TransportFault(Fault.DROP)]),
        to_reply(_whole_response(preamble, final)),
    ))
    add(_script(
        "refusal",
        "The model refuses: a refusal content part streamed as response.refusal.delta events, "
        "then completed.",
        to_reply(_whole_response(refusal_message(_REFUSAL, deltas=3))),
    ))
    add(_script(
        "refusal_after_text",
        "The model begins to answer, then refuses in the same message (an output_text part, "
        "then a refusal part), then completed.",
        to_reply(_whole_response(refusal_message(_REFUSAL, deltas=2, text=_BEGUN_ANSWER))),
    ))

    add(_script(
        "background_drop_then_resume",
        "A background response whose first stream is cut after 6 events, mid-answer; the "
        "client resumes it (GET /v1/responses/{id}?stream=true&starting_after=5) and gets the "
        "rest. Run with a background: true request.",
        attrs.evolve(_happy_reply(), background_drop_after_events=6),
    ))
    add(_script(
        "background_drop_before_created",
        "A background response whose first stream is cut before response.created (nothing to "
        "resume: the client asks again); attempt 2 is good. Run with a background: true "
        "request.",
        attrs.evolve(_happy_reply(), background_drop_after_events=0),
        _happy_reply(),
    ))

    dropped = to_reply([*_interrupted_start(), TransportFault(Fault.DROP)])
    add(_script("drop_every_attempt",
                "Every attempt (three) drops mid-answer, so a caller ends in error.",
                dropped, dropped, dropped))

    return {script.name: script for script in scripts}


SHAPES: Final[dict[str, Script]] = _build_shapes()
"""Every real-world stream shape, by name; ``SHAPES[name].description`` says what it is."""

BACKGROUND_SHAPES: Final = frozenset({"background_drop_then_resume", "background_drop_before_created"})
"""Shapes that show their failure only to a ``background: true`` request (to any other request
the simulator sends each reply whole)."""
