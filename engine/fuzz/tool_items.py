"""Hypothesis strategies for responses that carry tool calls of every kind, with the ground truth
of which calls the client must execute.

Theory of operation
===================

`tool_item_streams()` draws one well-formed Responses stream (`response.created`, optionally
`response.in_progress`, output items, `response.completed`) built from the real-world builders of
`engine.simulator.shapes`, mixing:

* calls the client must execute: function calls, custom tool calls declared by the `tools` list
  (Codex's freeform `apply_patch`), `local_shell_call`, `shell_call` (local environment),
  `apply_patch_call`;
* the same kinds run by the server: a local shell, shell (in a container) or apply_patch call
  whose output item (`<type>_output`, same call_id) follows later in the stream, after any number
  of other items; custom tool calls the `tools` list does not declare (xAI's server-side
  searches); a `web_search_call`;
* assistant messages (answer text) anywhere between them, some of them labelled
  `phase: "commentary"` (the preamble a model sends before its calls).

Some calls stream without their `output_item.done` (and input `.done`), and the terminal
`response.completed` carries either every finished item or `output: []` (rebuilt from what
streamed). When the drawn `tools` list is empty, an undeclared custom tool call cannot be ruled
out and counts as the client's, as the contract says.

Alongside the events, a `ToolItemStream` holds what any correct consumer must conclude: the
call_ids of the client's calls in output order (`client_call_ids`), those of the calls the server
ran (`server_call_ids`), all message text (`text`), the text that comes before the first client
call (`text_before_first_client_call`: the most a consumer may deliver to `on_text_delta` and,
with a commentary callback, to it and `on_commentary_delta` together), and the text told apart:
`answer_text`, `commentary` (each commentary message's text). `tests/test_tool_item_properties.py` checks `engine.consume` against it; a
session strategy can take `stream.events` as the events of one response body (`to_body`
encodes them as SSE bytes).
"""

from __future__ import annotations

from typing import Any, Final

import attrs
from hypothesis import strategies as st

from engine.simulator.shapes import (
    APPLY_PATCH_TOOL,
    WEATHER_TOOL,
    StreamPart,
    apply_patch_call,
    apply_patch_call_output,
    assemble,
    completed,
    created,
    custom_tool_call,
    encode_part,
    function_call,
    in_progress,
    local_shell_call,
    local_shell_call_output,
    output_items,
    shell_call,
    shell_call_output,
    text_message,
)
from engine.simulator.background import Event

__all__ = ["ITEM_KINDS", "SERVER_KINDS", "ToolItemStream", "to_body", "tool_item_streams"]

#: The kinds of output item a drawn stream mixes.
ITEM_KINDS: Final = (
    "text",
    "function_call",
    "custom_tool_call",
    "custom_tool_call_undeclared",
    "local_shell_call",
    "local_shell_call_run",
    "shell_call",
    "shell_call_hosted",
    "apply_patch_call",
    "apply_patch_call_run",
    "web_search_call",
)
#: Kinds the server runs itself (given a `tools` list that names tools, for the undeclared custom
#: tool call); the `*_run` and hosted kinds are followed by their output item.
SERVER_KINDS: Final = frozenset(
    {
        "custom_tool_call_undeclared",
        "local_shell_call_run",
        "shell_call_hosted",
        "apply_patch_call_run",
        "web_search_call",
    }
)
_WITH_OUTPUT: Final = frozenset({"local_shell_call_run", "shell_call_hosted", "apply_patch_call_run"})
#: Kinds whose items can stream without their `output_item.done`.
_UNFINISHABLE: Final = frozenset(
    {"function_call", "custom_tool_call", "custom_tool_call_undeclared", "shell_call",
     "shell_call_hosted"}
)
_TOOLS: Final[list[dict[str, Any]]] = [
    dict(WEATHER_TOOL), dict(APPLY_PATCH_TOOL), {"type": "local_shell"}, {"type": "shell"},
    {"type": "apply_patch"}, {"type": "web_search"},
]
_CONTAINER: Final = {"type": "container_reference", "container_id": "cntr_fuzz"}
_OPERATION: Final = {"type": "update_file", "path": "a.py", "diff": "@@\n-a\n+b\n"}
_TEXT: Final = st.text(min_size=1, max_size=12)
_WORDS: Final = ("Hi", "Paris", "ok then", "Grüße", "東京", "🚀", "a\nb")
_INPUTS: Final = ("", "*** Begin Patch", "x", "é\n東")
_INPUT: Final = st.text(max_size=16)
#: One draw of bytes decides a stream's small choices (as `engine.fuzz.strategies` draws
#: them: same size, so Hypothesis's copies of one draw over another fit).
_DICE_SIZE: Final = 36
_DICE: Final = st.binary(min_size=_DICE_SIZE, max_size=_DICE_SIZE)
#: Choices each call's byte packs: its kind, whether it is left unfinished, its deltas, whether
#: answer text comes before it.
_PACKED: Final = len(ITEM_KINDS) - 1


@attrs.frozen
class ToolItemStream:
    """One drawn response and the conclusions a correct consumer must reach about it."""

    #: Responses events in stream order, numbered (`sequence_number`).
    events: list[StreamPart]
    #: call_ids of the calls the client must execute, in output order.
    client_call_ids: list[str]
    #: call_ids of the calls the server ran (never in `tool_calls`).
    server_call_ids: list[str]
    #: Every text delta's text (answer and commentary), joined in stream order.
    text: str
    #: The text streamed before the first frame of the first client call.
    text_before_first_client_call: str
    #: The item kinds drawn, in output order (output items of server-run calls left out).
    kinds: list[str]
    #: The text of the messages that are not commentary, joined.
    answer_text: str = ""
    #: The text of each commentary message, in output order.
    commentary: list[str] = attrs.Factory(list)


def to_body(stream: ToolItemStream) -> bytes:
    """The stream's events as one SSE body (LF line endings)."""
    return b"".join(encode_part(part) for part in stream.events)


def _web_search(index: int) -> list[Event]:
    def item(status: str) -> Event:
        return {"id": f"ws_{index:02d}_fuzz", "type": "web_search_call", "status": status,
                "action": {"type": "search", "query": "capital of France"}}

    return [
        {"type": "response.output_item.added", "output_index": index, "item": item("in_progress")},
        {"type": "response.output_item.done", "output_index": index, "item": item("completed")},
    ]


def _unfinished(events: list[Event]) -> list[Event]:
    """A call's events without its `*.done` frames: announced and streamed, never finished."""
    return [event for event in events if not str(event.get("type", "")).endswith(".done")]


def _text(draw: st.DrawFn, byte: int) -> str:
    """Answer text from one byte: a word (even byte) or any text (odd byte, drawn)."""
    return _WORDS[(byte >> 1) % len(_WORDS)] if byte % 2 == 0 else draw(_TEXT)


@st.composite
def tool_item_streams(draw: st.DrawFn, *, max_items: int = 6) -> ToolItemStream:
    """A well-formed response mixing up to `max_items` client and server tool calls of every kind
    with answer text (see the module's theory of operation), and its ground truth.

    Its choices come from one draw of dice (more when `max_items` asks for more): whether the
    tools list names tools, the number of calls, a byte per call (kind, unfinished, deltas, text
    before it), a byte per text (words or drawn text, deltas), a byte per server-run call (where
    its output item goes) and per custom tool call (its input), a final text,
    `response.in_progress`, whether the terminal event lists the output, and which texts are
    commentary (a bit each). The zero dice give one finished function call and no tools list."""
    if max_items < 1:
        raise ValueError(f"max_items must be at least 1, not {max_items}")
    dice = draw(_DICE)
    while len(dice) < 6 + 3 * max_items + 1:
        dice += draw(_DICE)
    declare = dice[0] % 3 != 0  # the tools list names tools (two in three; none shrinks)
    count = 1 + dice[1] % max_items
    packed = dice[6 : 6 + count]
    text_bytes = iter(dice[6 + max_items : 6 + 2 * max_items + 1])
    output_bytes = iter(dice[6 + 2 * max_items + 1 :])  # server outputs' places, custom inputs
    calls = [ITEM_KINDS[1 + byte % _PACKED] for byte in packed]
    unfinished = [(byte // _PACKED) % 2 == 1 for byte in packed]
    deltas = [1 + (byte // _PACKED // 2) % 3 for byte in packed]
    # answer text before the calls and after each one, often
    kinds: list[str] = []
    for call, byte in zip(calls, packed):
        if (byte // _PACKED // 6) % 2:
            kinds.append("text")
        kinds.append(call)
    if dice[2] % 2:
        kinds.append("text")
    # the output item of each server-run hosted call, at a later place in the stream
    order: list[tuple[str, int]] = [(kind, position) for position, kind in enumerate(kinds)]
    for position, kind in enumerate(kinds):
        if kind in _WITH_OUTPUT:
            at = next(i for i, entry in enumerate(order) if entry == (kind, position))
            later = len(order) - at  # places after the call
            order.insert(at + 1 + next(output_bytes) % later, (f"{kind}_output", position))
    call_options = iter(zip(unfinished, deltas))

    call_ids: dict[int, str] = {}  # position in `kinds` -> call_id
    pieces: list[list[Event]] = []
    finished_pieces: list[list[Event]] = []
    client_ids: list[str] = []
    server_ids: list[str] = []
    text: list[str] = []
    answer: list[str] = []
    commentary: list[str] = []
    before_client: list[str] = []
    client_seen = False
    for index, (kind, position) in enumerate(order):
        call_id = f"call_{index:02d}_fuzz"
        events: list[Event]
        if kind.endswith("_output"):
            of = call_ids[position]
            if kind == "local_shell_call_run_output":
                events = local_shell_call_output(of, '{"output":"ok"}', output_index=index)
            elif kind == "shell_call_hosted_output":
                events = shell_call_output(of, [("ok\n", "", 0)], output_index=index)
            else:
                events = apply_patch_call_output(of, "Updated a.py", output_index=index)
            pieces.append(events)
            finished_pieces.append(events)
            continue
        call_ids[position] = call_id
        left_open, pieces_of = (False, 1) if kind == "text" else next(call_options)
        if kind == "text":
            byte = next(text_bytes)
            words = _text(draw, byte)
            preamble = (dice[5] >> len(text)) & 1 == 1
            events = text_message(words, deltas=1 + (byte // 2) % 3, output_index=index,
                                  phase="commentary" if preamble else None)
            (commentary if preamble else answer).append(words)
            text.append(words)
            if not client_seen:
                before_client.append(words)
        elif kind == "function_call":
            events = function_call("get_weather", '{"city":"Oslo"}', output_index=index,
                                   call_id=call_id, deltas=pieces_of)
        elif kind in ("custom_tool_call", "custom_tool_call_undeclared"):
            name = "apply_patch" if kind == "custom_tool_call" else "x_keyword_search"
            byte = next(output_bytes)
            given = draw(_INPUT) if byte % 2 else _INPUTS[(byte >> 1) % len(_INPUTS)]
            events = custom_tool_call(name, given, output_index=index, call_id=call_id,
                                      deltas=pieces_of)
        elif kind.startswith("local_shell_call"):
            events = local_shell_call(["ls"], output_index=index, call_id=call_id)
        elif kind.startswith("shell_call"):
            events = shell_call(["ls", "pwd"], output_index=index, call_id=call_id,
                                environment=_CONTAINER if kind == "shell_call_hosted" else None)
        elif kind.startswith("apply_patch_call"):
            events = apply_patch_call(_OPERATION, output_index=index, call_id=call_id)
        else:
            events = _web_search(index)
        finished_pieces.append(events)
        if kind in _UNFINISHABLE and left_open:
            events = _unfinished(events)
        pieces.append(events)
        if kind == "text":
            continue
        server = kind in SERVER_KINDS and (declare or kind != "custom_tool_call_undeclared")
        if server:
            if kind != "web_search_call":
                server_ids.append(call_id)
        else:
            client_ids.append(call_id)
            client_seen = True

    tools = _TOOLS if declare else []
    start = [created(tools=tools)]
    if dice[3] % 2:
        start.append(in_progress(tools=tools))
    sent = output_items(*finished_pieces) if dice[4] % 2 == 0 else []
    events_out = assemble(*start, *pieces, completed(sent, tools=tools))
    return ToolItemStream(
        events=events_out,
        client_call_ids=client_ids,
        server_call_ids=server_ids,
        text="".join(text),
        text_before_first_client_call="".join(before_client),
        kinds=kinds,
        answer_text="".join(answer),
        commentary=commentary,
    )
