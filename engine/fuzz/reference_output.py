"""The reference model's account of one attempt's output: where each frame lands, what each output
item holds, and what a turn result makes of them (`output_text`, `tool_calls`).

Theory of operation
===================

`engine.fuzz.invariants` re-states the machines from the contract to check them. This module
is the part of that re-statement that follows output items, written from the rules
`machines.output` documents, apart from its code (only the classification of calls is shared:
`CLIENT_CALL_TYPES`, `HOSTED_CALL_TYPES`, `is_client_call`, `output_key`,
`declared_custom_tools`, which are data the contract's `tool_calls` row describes):

Placement. A frame lands at its `output_index` when that is a JSON integer. Otherwise at the
item its `item_id` names (for `output_item.*` frames without one: their item's `id`), once that
id is known; otherwise, a frame that has a `delta` and no id continues the newest item; anything
else opens a new item after the last one. An id becomes known where its item is announced,
finished or first streamed (the announcement and the finish win).

Items. `output_item.added` announces an item: its kind is its `type` when that is a non-empty
string, a message when the type is missing or empty, and no kind the machines know otherwise;
whatever frames at that place streamed before it is kept. `output_item.done` makes the server's
item the one listed. Text deltas and `output_text.done` fill a message's content parts (a part
index that is not an integer counts as 0; `done` replaces the part), argument deltas and
`arguments.done` a function call's arguments, custom-tool-input frames a custom tool call's
input, shell-command frames a shell call's commands. An item never finished is rebuilt from what
streamed: calls with what their frames said, `incomplete` unless finished (arguments or input
`done`) or the response completed; a message with its parts; an item of another kind as
announced.

Results. `output_text` joins the `output_text` parts of the `message` items (content that is not
a list holds none). `tool_calls` lists the client's calls among the items, judged with the
`tools` the response declares and the output items among the items; with a terminal response
whose output is a non-empty list, that output plus every streamed call it left out (by call_id)
and every streamed output item.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from machines.json_text import recursion_room
from machines.output import (
    CLIENT_CALL_TYPES,
    HOSTED_CALL_TYPES,
    OUTPUT_ITEM_TYPES,
    declared_custom_tools,
    is_client_call,
    output_key,
)

__all__ = [
    "MAX_JSON_DEPTH",
    "ReferenceOutput",
    "is_json",
    "join_text",
    "json_value",
    "listed_calls",
    "merged_items",
]

#: JSON nested deeper than this is not read (orjson's limit; the fallback reader keeps it).
MAX_JSON_DEPTH: Final = 1024

CallFacts = tuple[str, Any, Any]


# --------------------------------------------------------------------------------------------
# JSON as the machines read it


_TOKENS: Final = re.compile(r'\\.|["\[\]{}]', re.DOTALL)


def _depth(text: str) -> int:
    """How deeply `text` nests lists and objects (brackets inside strings do not count)."""
    depth = deepest = 0
    inside = False
    for token in _TOKENS.findall(text):
        if token == '"':
            inside = not inside
        elif inside or len(token) == 2:
            continue  # an escape, or a bracket inside a string
        elif token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


_NOT_JSON: Final = object()


def json_value(data: str) -> Any:
    """The JSON value `data` holds, or `_NOT_JSON`: any JSON text (numbers beyond a double,
    escaped lone surrogates, NaN and Infinity included) nested at most `MAX_JSON_DEPTH` deep."""
    import orjson

    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    if _depth(data) > MAX_JSON_DEPTH:
        return _NOT_JSON
    try:
        with recursion_room(MAX_JSON_DEPTH + 100):
            return json.loads(data)
    except ValueError:
        return _NOT_JSON


def is_json(value: Any) -> bool:
    return value is not _NOT_JSON


# --------------------------------------------------------------------------------------------
# Output items


def _part_index(value: Any) -> int:
    return value if type(value) is int else 0


def _kind_of(item: dict[str, Any]) -> str:
    kind = item.get("type")
    if isinstance(kind, str) and kind:
        return kind
    return "message" if not kind else "?"


class _Streamed:
    """What one place of the output accumulated from the frames that landed there."""

    def __init__(self, kind: str, item_id: str | None, announced: dict[str, Any] | None) -> None:
        self.kind = kind
        self.item_id = item_id
        self.announced = announced
        self.parts: dict[int, str] = {}
        self.arguments = ""
        self.arguments_done: str | None = None
        self.commands: dict[int, str] = {}

    def carry(self, earlier: _Streamed) -> None:
        self.parts = earlier.parts
        self.arguments = earlier.arguments
        self.arguments_done = earlier.arguments_done
        self.commands = earlier.commands

    def facts(self) -> CallFacts | None:
        if self.kind not in CLIENT_CALL_TYPES:
            return None
        announced = self.announced or {}
        return self.kind, announced.get("name"), announced.get("call_id")

    def rebuilt(self, status: str) -> dict[str, Any]:
        item = dict(self.announced) if self.announced else {}
        kind = self.kind
        if kind in ("function_call", "custom_tool_call"):
            item.setdefault("type", kind)
            self._identify(item)
            finished = self.arguments_done is not None
            field = "arguments" if kind == "function_call" else "input"
            item[field] = self.arguments_done if finished else self.arguments
            item["status"] = "completed" if finished else status
        elif kind in HOSTED_CALL_TYPES:
            item.setdefault("type", kind)
            self._identify(item)
            if self.commands:
                action = item.get("action")
                item["action"] = {
                    **(action if isinstance(action, dict) else {}),
                    "commands": [self.commands[i] for i in sorted(self.commands)],
                }
            item["status"] = status
        elif kind == "reasoning":
            item.setdefault("type", kind)
            self._identify(item)
        elif kind != "message" and item:
            if "status" in item:  # an item of another kind, as announced
                item["status"] = status
        else:
            item.setdefault("type", "message")
            self._identify(item)
            item.setdefault("role", "assistant")
            item["status"] = status
            item["content"] = [
                {"type": "output_text", "text": self.parts[i], "annotations": []}
                for i in sorted(self.parts)
            ]
        return item

    def _identify(self, item: dict[str, Any]) -> None:
        if self.item_id is not None:
            item.setdefault("id", self.item_id)


class ReferenceOutput:
    """One attempt's output items, by place (see the module's theory of operation)."""

    def __init__(self) -> None:
        self.streamed: dict[int, _Streamed] = {}
        self.finished: dict[int, dict[str, Any]] = {}
        self.places: dict[str, int] = {}  # item id -> place
        self.end = 0  # one after the last place taken
        self.outputs: set[tuple[str, str]] = set()

    @property
    def empty(self) -> bool:
        return not self.streamed and not self.finished

    # -- where a frame lands -----------------------------------------------------------------
    def place(self, payload: dict[str, Any]) -> int:
        index = payload.get("output_index")
        if type(index) is int:
            self.end = max(self.end, index + 1)
            return index
        item_id = payload.get("item_id")
        if item_id is None:
            item = payload.get("item")
            item_id = item.get("id") if isinstance(item, dict) else None
        if isinstance(item_id, str) and item_id in self.places:
            return self.places[item_id]
        if item_id is None and "delta" in payload and self.end:
            return self.end - 1
        index = self.end
        self.end += 1
        if isinstance(item_id, str):
            self.places[item_id] = index
        return index

    def _at(self, index: int, kind: str, payload: dict[str, Any]) -> _Streamed:
        streamed = self.streamed.get(index)
        if streamed is None:
            item_id = payload.get("item_id")
            streamed = _Streamed(kind, item_id if isinstance(item_id, str) else None, None)
            self.streamed[index] = streamed
            if streamed.item_id is not None:
                self.places.setdefault(streamed.item_id, index)
        return streamed

    # -- frames ------------------------------------------------------------------------------
    def announce(self, payload: dict[str, Any], item: dict[str, Any]) -> int:
        index = self.place(payload)
        item_id = item.get("id")
        streamed = _Streamed(_kind_of(item), item_id if isinstance(item_id, str) else None, item)
        earlier = self.streamed.get(index)
        if earlier is not None:
            streamed.carry(earlier)
        self.streamed[index] = streamed
        if streamed.item_id is not None:
            self.places[streamed.item_id] = index
        self._note(item)
        return index

    def finish(self, payload: dict[str, Any], item: dict[str, Any]) -> int:
        index = self.place(payload)
        self.finished[index] = item
        item_id = item.get("id")
        if isinstance(item_id, str):
            self.places[item_id] = index
        self._note(item)
        return index

    def _note(self, item: dict[str, Any]) -> None:
        key = output_key(item)
        if key is not None:
            self.outputs.add(key)

    def text(self, payload: dict[str, Any], text: str, *, replace: bool) -> None:
        streamed = self._at(self.place(payload), "message", payload)
        part = _part_index(payload.get("content_index"))
        streamed.parts[part] = text if replace else streamed.parts.get(part, "") + text

    def reasoning(self, payload: dict[str, Any]) -> None:
        self._at(self.place(payload), "reasoning", payload)

    def arguments(self, payload: dict[str, Any], text: str, *, done: bool) -> None:
        streamed = self._at(self.place(payload), "function_call", payload)
        if not done:
            streamed.arguments += text
            return
        streamed.arguments_done = text
        name = payload.get("name")
        if isinstance(name, str) and streamed.announced is None:
            streamed.announced = {"type": "function_call", "name": name}

    def custom_input(self, payload: dict[str, Any], text: str | None, *, done: bool) -> int:
        index = self.place(payload)
        streamed = self._at(index, "custom_tool_call", payload)
        if not done:
            streamed.arguments += text or ""
        elif text is not None:
            streamed.arguments_done = text
        return index

    def command(self, payload: dict[str, Any], text: str, *, replace: bool) -> int:
        index = self.place(payload)
        streamed = self._at(index, "shell_call", payload)
        key = _part_index(payload.get("command_index"))
        streamed.commands[key] = text if replace or key not in streamed.commands else (
            streamed.commands[key] + text
        )
        return index

    # -- calls -------------------------------------------------------------------------------
    def facts(self, index: int) -> CallFacts | None:
        """What decides whose the call at `index` is: the finished item's, else the streamed."""
        finished = self.finished.get(index)
        if finished is not None:
            kind = finished.get("type")
            if isinstance(kind, str) and kind in CLIENT_CALL_TYPES:
                return kind, finished.get("name"), finished.get("call_id")
            return None
        streamed = self.streamed.get(index)
        return streamed.facts() if streamed is not None else None

    def calls(self) -> list[tuple[int, CallFacts]]:
        found = []
        for index in sorted(self.streamed.keys() | self.finished.keys()):
            facts = self.facts(index)
            if facts is not None:
                found.append((index, facts))
        return found

    def open_calls(self) -> list[CallFacts]:
        """Facts of calls streamed or announced and not finished."""
        return [
            facts
            for index, streamed in self.streamed.items()
            if index not in self.finished and (facts := streamed.facts()) is not None
        ]

    # -- results -----------------------------------------------------------------------------
    def items(self, status: str) -> list[dict[str, Any]]:
        return [
            self.finished[index] if index in self.finished else self.streamed[index].rebuilt(status)
            for index in sorted(self.streamed.keys() | self.finished.keys())
        ]


def join_text(items: Any) -> str:
    """The `output_text` parts of the `message` items, joined (the SDK's `output_text`)."""
    out = []
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict) and item.get("type") == "message":
            content = item.get("content")
            for part in content if isinstance(content, list) else ():
                if (
                    isinstance(part, dict)
                    and part.get("type") == "output_text"
                    and isinstance(part.get("text"), str)
                ):
                    out.append(part["text"])
    return "".join(out)


def _arguments_text(kind: str, item: dict[str, Any]) -> str:
    if kind == "function_call":
        value = item.get("arguments")
        return value if isinstance(value, str) else ""
    if kind == "custom_tool_call":
        value = item.get("input")
        return value if isinstance(value, str) else ""
    value = item.get("operation" if kind == "apply_patch_call" else "action")
    if value is None:
        return ""
    try:
        with recursion_room(MAX_JSON_DEPTH + 100):
            return json.dumps(value, separators=(",", ":"), sort_keys=True)
    except (TypeError, ValueError, RecursionError):
        return ""


def listed_calls(items: list[Any], tools: Any, *, completed: bool) -> list[dict[str, Any]]:
    """`TurnResult.tool_calls` for these items (the contract's `tool_calls` row)."""
    custom_tools = declared_custom_tools(tools)
    outputs = {key for item in items if isinstance(item, dict) and (key := output_key(item))}
    calls = []
    for item in items:
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if not isinstance(kind, str) or kind not in CLIENT_CALL_TYPES:
            continue
        facts = (kind, item.get("name"), item.get("call_id"))
        if not is_client_call(facts, custom_tools=custom_tools, outputs=outputs):
            continue
        status = item.get("status")
        cut_off = not completed and isinstance(status, str) and status in ("incomplete", "in_progress")
        calls.append(
            {
                "call_id": item.get("call_id"),
                "name": kind.removesuffix("_call") if kind in HOSTED_CALL_TYPES else item.get("name"),
                "arguments": _arguments_text(kind, item),
                "status": "incomplete" if cut_off else "completed",
                "type": kind,
            }
        )
    return calls


def merged_items(sent: list[Any], streamed: list[dict[str, Any]]) -> list[Any]:
    """The terminal response's output, then every streamed call of a call_id it does not list
    among its calls, and every streamed output item."""
    known = [
        item.get("call_id")
        for item in sent
        if isinstance(item, dict) and _is_call_type(item.get("type"))
    ]
    left_out = [
        item
        for item in streamed
        if (_is_call_type(item.get("type")) and item.get("call_id") not in known)
        or (isinstance(item.get("type"), str) and item["type"] in OUTPUT_ITEM_TYPES)
    ]
    return [*sent, *left_out]


def _is_call_type(kind: Any) -> bool:
    return isinstance(kind, str) and kind in CLIENT_CALL_TYPES
