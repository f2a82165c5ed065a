"""The reference model's output rules: whose each call is, where each frame's content lands, and
what a turn result makes of it (`output_text`, `tool_calls`).

Theory of operation
===================

Part of `engine.fuzz.reference`, stated from the contract and the theory of operation
`machines/output.py` documents, with nothing imported from the machines:

Whose call (CONTRACT v2, `tool_calls` row): `CLIENT_CALLS` may have to be executed by the client.
A function call is always the client's; a custom tool call is the server's when the response's
`tools` name tools but no `custom` tool of its name; a built-in call (`BUILT_IN_CALLS`) is the
server's when its output item (`<type>_output`, same call_id) is in the same response.

Placement. A frame lands at its `output_index` when that is a JSON integer; else at the item its
`item_id` names (an `output_item.*` frame: its item's `id`), once known; else a frame with a
`delta` and no id continues the newest item, and anything else opens a new one. An id becomes
known where its item is announced, finished or first streamed (announcement and finish win).
CONTRACT v3 "deltas addressed only by item_id ... are handled": a place opened for an id by a
frame without an `output_index` is unplaced; it moves, with what it holds, to the
`output_index` its item's announcement or finish gives, when nothing has landed there yet (so the
item is one, not two); and an announcement or finish whose `output_index` is another id's
unplaced place first moves that place to the next free one (two items never share a place).

Items. `output_item.added` announces an item (its kind: a non-empty string `type`; a message when
the type is missing or empty), keeping what frames streamed there before; `output_item.done`
makes the server's item the one listed, with the phase its announcement stated when it states
none itself ("The phase of every output item is kept in result.response"; a phase is stated by
a `phase` that is not null). Content frames fill their `Slot`. An item never finished is rebuilt
from what streamed: a call `incomplete` unless finished (its arguments or input `done`) or the
response completed, a message with its parts (at each content index its text part, then its
refusal part), another kind as announced.

Results. `output_text` joins the `output_text` parts of the `message` items; `answer_of` tells
them apart (CONTRACT v3: the answer, each commentary message's text, the refusal); `tool_calls`
lists the client's calls among them (judged with the response's `tools` and the output items
among them); a terminal response's non-empty output is completed by every streamed call it left
out and every streamed output item. Server JSON is read nested at most `MAX_JSON_DEPTH` deep.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import threading
from typing import Any, Final, Iterator, Literal

import attrs
import orjson

__all__ = [
    "BUILT_IN_CALLS",
    "CLIENT_CALLS",
    "MAX_JSON_DEPTH",
    "CallJudge",
    "ReferenceOutput",
    "Slot",
    "answer_of",
    "is_json",
    "join_text",
    "json_value",
    "listed_calls",
    "merged_items",
]

# --------------------------------------------------------------------------------------------
# JSON as the contract reads server data

#: JSON nested deeper than this is no JSON (orjson's own limit, kept at any recursion limit).
MAX_JSON_DEPTH: Final = 1024

_TOKENS: Final = re.compile(r'\\.|["\[\]{}]', re.DOTALL)
_ROOM: Final = threading.Lock()
_NOT_JSON: Final = object()


@contextlib.contextmanager
def _room() -> Iterator[None]:
    """Recursion room for `MAX_JSON_DEPTH` levels and some, whatever the stack's depth."""
    with _ROOM:
        before = sys.getrecursionlimit()
        sys.setrecursionlimit(before + MAX_JSON_DEPTH + 100)
        try:
            yield
        finally:
            sys.setrecursionlimit(before)


def _too_deep(text: str) -> bool:
    """Lists and objects nest deeper than `MAX_JSON_DEPTH` (brackets in strings do not count)."""
    depth, inside = 0, False
    for token in _TOKENS.findall(text):
        if token == '"':
            inside = not inside
        elif not inside and len(token) == 1:
            depth += 1 if token in "[{" else -1
            if depth > MAX_JSON_DEPTH:
                return True
    return False


def json_value(data: str) -> Any:
    """The JSON value `data` holds, or a marker `is_json` refuses."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        if _too_deep(data):
            return _NOT_JSON
    try:
        with _room():
            return json.loads(data)
    except ValueError:
        return _NOT_JSON


def is_json(value: Any) -> bool:
    """`value` came from JSON text (`json_value` read it)."""
    return value is not _NOT_JSON


# --------------------------------------------------------------------------------------------
# Whose call it is (CONTRACT v2, `tool_calls`)

#: "Every call the client must execute is listed, in output order: function_call;
#: custom_tool_call (arguments = its raw input string); local_shell_call, shell_call,
#: apply_patch_call (name = the item type without _call, arguments = the item's action or
#: operation as a JSON string)": each type with the field its `arguments` come from.
CLIENT_CALLS: Final[dict[str, str]] = {
    "function_call": "arguments",
    "custom_tool_call": "input",
    "local_shell_call": "action",
    "shell_call": "action",
    "apply_patch_call": "operation",
}
#: The built-in calls: listed by type with JSON arguments, and the server's "whose output item
#: (<type>_output, same call_id) is in the same response".
BUILT_IN_CALLS: Final = frozenset({"local_shell_call", "shell_call", "apply_patch_call"})
_OUTPUT_OF: Final = {f"{kind}_output": kind for kind in BUILT_IN_CALLS}

#: What decides whose a call is: its type, name and call_id.
CallFacts = tuple[str, Any, Any]


def call_facts(item: dict[str, Any]) -> CallFacts | None:
    kind = item.get("type")
    if isinstance(kind, str) and kind in CLIENT_CALLS:
        return kind, item.get("name"), item.get("call_id")
    return None


def custom_tools_declared(tools: Any) -> frozenset[str] | None:
    """The `custom` tools a `tools` list declares, or None when it names no tool at all (then
    no custom tool call can be ruled out): "a custom_tool_call whose name the response's tools
    list does not declare as a custom tool while that list names other tools"."""
    named = [t for t in tools if isinstance(t, dict)] if isinstance(tools, list) else []
    if not named:
        return None
    return frozenset(
        t["name"] for t in named if t.get("type") == "custom" and isinstance(t.get("name"), str)
    )


def _ran(item: dict[str, Any]) -> tuple[str, str] | None:
    """(call type, call_id) of the call an output item reports as run (a
    `local_shell_call_output` names its call by `id`), or None."""
    kind = item.get("type")
    ran = _OUTPUT_OF.get(kind) if isinstance(kind, str) else None
    call_id = item.get("call_id") if isinstance(item.get("call_id"), str) else item.get("id")
    return (ran, call_id) if ran is not None and isinstance(call_id, str) else None


@attrs.define(slots=True)
class CallJudge:
    """What is known of a response that decides whose its calls are: the custom tools its
    `tools` declare (None: none named) and the calls its output items report as run."""

    custom_tools: frozenset[str] | None = None
    ran: set[tuple[str, str]] = attrs.Factory(set)

    def is_clients(self, facts: CallFacts) -> bool:
        kind, name, call_id = facts
        if kind == "custom_tool_call":
            tools = self.custom_tools
            return tools is None or not isinstance(name, str) or name in tools
        if kind in BUILT_IN_CALLS:
            return not (isinstance(call_id, str) and (kind, call_id) in self.ran)
        return kind == "function_call"

    def note(self, item: dict[str, Any]) -> None:
        """An item of the response: an output item shows its call ran on the server."""
        if (ran := _ran(item)) is not None:
            self.ran.add(ran)


# --------------------------------------------------------------------------------------------
# Where content lands

Mode = Literal["append", "replace", "done"]
#: What a frame does when its field is not a string: lands nowhere ("skip"), lands "" as a
#: string would ("empty"), or only takes its place (`touch`: "" appended).
OtherType = Literal["skip", "empty", "touch"]


@attrs.frozen(slots=True)
class Slot:
    """Where one kind of frame keeps its content: the kind of item it streams, the payload field
    holding the text, the part index field (if parts), and how the text lands (`done`: the full
    value, which finishes a call's arguments or input); `holds` names the parts it fills where
    that is not the index field's name (a message's refusal parts)."""

    kind: str
    field: str
    mode: Mode
    other: OtherType = "skip"
    part: str | None = None
    holds: str | None = None


def _part(value: Any) -> int:
    return value if type(value) is int else 0


def _kind_of(item: dict[str, Any]) -> str:
    kind = item.get("type")
    if isinstance(kind, str) and kind:
        return kind
    return "message" if not kind else "?"


class _Streamed:
    """What one place of the output accumulated from the frames that landed there."""

    __slots__ = ("kind", "item_id", "announced", "parts", "text", "done")

    def __init__(self, kind: str, item_id: Any, announced: dict[str, Any] | None) -> None:
        self.kind = kind
        self.item_id = item_id if isinstance(item_id, str) else None
        self.announced = announced
        #: by the part index field (`content_index`: message parts, `command_index`: commands)
        self.parts: dict[str, dict[int, str]] = {}
        self.text = ""  # a call's streamed arguments or input
        self.done: str | None = None  # ... and its full value

    def facts(self) -> CallFacts | None:
        if self.kind not in CLIENT_CALLS:
            return None
        announced = self.announced or {}
        return self.kind, announced.get("name"), announced.get("call_id")

    def rebuilt(self, status: str) -> dict[str, Any]:
        item = dict(self.announced) if self.announced else {}
        kind = self.kind
        if kind not in CLIENT_CALLS and kind not in ("message", "reasoning"):
            if item and "status" in item:  # an item of another kind, as announced
                item["status"] = status
            if item:
                return item
            kind = "message"
        item.setdefault("type", kind)
        if self.item_id is not None:
            item.setdefault("id", self.item_id)
        if kind == "reasoning":
            return item
        item["status"] = status
        if kind == "message":
            item.setdefault("role", "assistant")
            texts = self.parts.get("content_index", {})
            refusals = self.parts.get("refusal", {})
            item["content"] = [
                part
                for i in sorted(texts.keys() | refusals.keys())
                for part in (
                    *([{"type": "output_text", "text": texts[i], "annotations": []}]
                      if i in texts else []),
                    *([{"type": "refusal", "refusal": refusals[i]}] if i in refusals else []),
                )
            ]
        elif kind in ("function_call", "custom_tool_call"):
            item[CLIENT_CALLS[kind]] = self.text if self.done is None else self.done
            if self.done is not None:
                item["status"] = "completed"
        elif commands := self.parts.get("command_index"):
            action = item.get("action")
            item["action"] = {
                **(action if isinstance(action, dict) else {}),
                "commands": [commands[i] for i in sorted(commands)],
            }
        return item


class ReferenceOutput:
    """One response's output items, by place (see the module's theory of operation)."""

    def __init__(self) -> None:
        self.streamed: dict[int, _Streamed] = {}
        self.finished: dict[int, dict[str, Any]] = {}
        self.places: dict[str, int] = {}  # item id -> place
        self.unplaced: dict[int, str] = {}  # places an id took without an output_index
        self.end = 0  # one after the last place taken
        self.judge = CallJudge()

    @property
    def empty(self) -> bool:
        return not self.streamed and not self.finished

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
            self.unplaced[index] = item_id
        return index

    def item(
        self, payload: dict[str, Any], item: dict[str, Any], *, done: bool
    ) -> tuple[int, list[tuple[int, int]]]:
        """`output_item.added` (an announcement) or `.done` (the server's item): its place, and
        the places that moved (from, to), in order."""
        index = self.place(payload)
        item_id = item.get("id")
        moves = []
        if type(payload.get("output_index")) is int:
            owner = self.unplaced.pop(index, None)
            if owner is not None and owner != item_id:  # another item's unplaced place
                self._move(index, self.end)
                self.unplaced[self.end] = owner
                moves.append((index, self.end))
                self.end += 1
            own = self.places.get(item_id) if isinstance(item_id, str) else None
            if (own is not None and own in self.unplaced and own != index
                    and index not in self.streamed and index not in self.finished):
                del self.unplaced[own]
                self._move(own, index)
                moves.append((own, index))
        if done:
            self.finished[index] = item
        else:
            streamed = _Streamed(_kind_of(item), item_id, item)
            earlier = self.streamed.get(index)
            if earlier is not None:  # frames that raced ahead of the announcement are kept
                streamed.parts, streamed.text = earlier.parts, earlier.text
                streamed.done = earlier.done
            self.streamed[index] = streamed
        if isinstance(item_id, str):
            self.places[item_id] = index
        self.judge.note(item)
        return index, moves

    def _move(self, source: int, dest: int) -> None:
        """What landed at `source` lands at `dest` from now on."""
        if source in self.streamed:
            self.streamed[dest] = self.streamed.pop(source)
        if source in self.finished:
            self.finished[dest] = self.finished.pop(source)
        self.places = {key: dest if at == source else at for key, at in self.places.items()}

    def land(self, slot: Slot, payload: dict[str, Any]) -> int | None:
        """A content frame: its text lands in its slot; its place, or None when it landed
        nowhere (a field that is not a string, which the slot skips)."""
        text = payload.get(slot.field)
        mode = slot.mode
        if not isinstance(text, str):
            if slot.other == "skip":
                return None
            text, mode = "", mode if slot.other == "empty" else "append"
        index = self.place(payload)
        streamed = self.streamed.get(index)
        if streamed is None:
            streamed = self.streamed[index] = _Streamed(slot.kind, payload.get("item_id"), None)
            if streamed.item_id is not None:
                self.places.setdefault(streamed.item_id, index)
        if slot.part is not None:
            parts = streamed.parts.setdefault(slot.holds or slot.part, {})
            key = _part(payload.get(slot.part))
            parts[key] = parts.get(key, "") + text if mode == "append" else text
        elif mode == "append":
            streamed.text += text
        else:
            streamed.done = text
            name = payload.get("name")  # `function_call_arguments.done` names its call
            if slot.kind == "function_call" and type(name) is str and streamed.announced is None:
                streamed.announced = {"type": "function_call", "name": name}
        return index

    def facts(self, index: int) -> CallFacts | None:
        """What decides whose the call at `index` is: the finished item's, else the streamed."""
        finished = self.finished.get(index)
        if finished is not None:
            return call_facts(finished)
        streamed = self.streamed.get(index)
        return streamed.facts() if streamed is not None else None

    def calls(self) -> list[tuple[int, CallFacts]]:
        """Every place that holds a call, with its facts."""
        return [
            (index, facts)
            for index in self.streamed.keys() | self.finished.keys()
            if (facts := self.facts(index)) is not None
        ]

    def every_clients_call_finished(self) -> bool:
        """No call of the client's was announced or streamed without its `output_item.done`."""
        return not any(
            (facts := streamed.facts()) is not None and self.judge.is_clients(facts)
            for index, streamed in self.streamed.items()
            if index not in self.finished
        )

    def items(self, status: str) -> list[dict[str, Any]]:
        out = []
        for index in sorted(self.streamed.keys() | self.finished.keys()):
            streamed = self.streamed.get(index)
            if index not in self.finished:
                assert streamed is not None
                out.append(streamed.rebuilt(status))
                continue
            item = self.finished[index]
            announced = streamed.announced if streamed is not None else None
            if item.get("phase") is None and announced and announced.get("phase") is not None:
                item = {**item, "phase": announced["phase"]}
            out.append(item)
        return out


# --------------------------------------------------------------------------------------------
# What a result makes of the items


def join_text(items: Any) -> str:
    """The `output_text` parts of the `message` items, joined (the SDK's `output_text`)."""
    out = []
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict) and item.get("type") == "message":
            content = item.get("content")
            for part in content if isinstance(content, list) else ():
                if isinstance(part, dict) and part.get("type") == "output_text":
                    if isinstance(part.get("text"), str):
                        out.append(part["text"])
    return "".join(out)


def answer_of(items: Any) -> tuple[str, list[str], str | None]:
    """CONTRACT v3: "answer_text: the same join over message items whose phase is not
    "commentary" (no phase = answer)"; "commentary: the text of each phase: "commentary"
    message, in output order"; "refusal: None, or the refusal text (all refusal parts joined, in
    output order)" (a part's text: its `text`, or its `refusal`, when that is a string)."""
    answer, commentary, refusals = [], [], []
    for item in items if isinstance(items, list) else ():
        if not (isinstance(item, dict) and item.get("type") == "message"):
            continue
        content = item.get("content")
        parts = [p for p in content if isinstance(p, dict)] if isinstance(content, list) else []
        text = "".join(p["text"] for p in parts
                       if p.get("type") == "output_text" and isinstance(p.get("text"), str))
        refusals += [p["refusal"] for p in parts
                     if p.get("type") == "refusal" and isinstance(p.get("refusal"), str)]
        if item.get("phase") == "commentary":
            commentary.append(text)
        else:
            answer.append(text)
    return "".join(answer), commentary, "".join(refusals) if refusals else None


def listed_calls(items: list[Any], tools: Any, *, completed: bool) -> list[dict[str, Any]]:
    """`TurnResult.tool_calls` for these items (the contract's `tool_calls` row): `status`
    "incomplete" when the stream broke before the call's arguments finished."""
    judge = CallJudge(custom_tools_declared(tools))
    for item in items:
        if isinstance(item, dict):
            judge.note(item)
    calls = []
    for item in items:
        facts = call_facts(item) if isinstance(item, dict) else None
        if facts is None or not judge.is_clients(facts):
            continue
        kind = facts[0]
        value = item.get(CLIENT_CALLS[kind])
        if kind in BUILT_IN_CALLS:
            name, arguments = kind.removesuffix("_call"), "" if value is None else _json_text(value)
        else:
            name, arguments = item.get("name"), value if isinstance(value, str) else ""
        cut_off = not completed and item.get("status") in ("incomplete", "in_progress")
        status = "incomplete" if cut_off else "completed"
        calls.append({"call_id": item.get("call_id"), "name": name, "arguments": arguments,
                      "status": status, "type": kind})
    return calls


def _json_text(value: Any) -> str:
    """An object as compact ASCII JSON with sorted keys ("" when JSON cannot hold it)."""
    try:
        with _room():
            return json.dumps(value, separators=(",", ":"), sort_keys=True)
    except (TypeError, ValueError, RecursionError):
        return ""


def merged_items(sent: list[Any], streamed: list[dict[str, Any]]) -> list[Any]:
    """The terminal response's output, then every streamed call of a call_id it does not list
    among its calls, and every streamed output item."""
    known = [item.get("call_id") for item in sent if isinstance(item, dict) and call_facts(item)]
    left_out = [
        item
        for item in streamed
        if (call_facts(item) and item.get("call_id") not in known)
        or (isinstance(kind := item.get("type"), str) and kind in _OUTPUT_OF)
    ]
    return [*sent, *left_out]
