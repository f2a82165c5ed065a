"""Output assembly: the response's output items, rebuilt from what one attempt streamed.

The stream-attempt machine decides *which* events count; this module only keeps their content,
keyed by `output_index` (events without one are placed by their `item_id`, else appended). A
place opened for an `item_id` by events without an `output_index` is *floating*: when its item's
`output_item.added` or `.done` gives an `output_index`, the place moves there (when nothing else
is placed there yet), so a relay that addresses content by `item_id` alone still builds one item;
and an item event whose `output_index` is another item's floating place moves that place out of
the way first (to the next free index), so two items never share one. The machine is told each
move (`Moves`), to keep what it knows of a place with the place.

- `output_item.added` opens an item; `output_item.done` makes its item authoritative;
- text, refusal, reasoning, function-argument and custom-tool-input deltas (and the commands a
  shell call streams) accumulate per item (and per content part); `*.done` events carry the
  authoritative full value;
- `items()` lists every item in `output_index` order: the server's `done` item where there is one,
  otherwise one built from the accumulated deltas. So a function call that was announced and
  streamed but never `done` is kept, and text that streamed without any item event still becomes a
  completed assistant message.

Pure data, no I/O. `join_output_text()` joins text exactly as the openai SDK's
`Response.output_text` does (every `output_text` part of every `message` item, in output order);
`answer_of()` tells the parts of that text apart (contract v3): the answer proper (messages whose
`phase` is not "commentary"), the commentary (each `phase: "commentary"` message's text), and the
refusal (every `refusal` part's text). A rebuilt message keeps what its announcement said, its
`phase` included, so a backfilled output keeps the phase a follow-up request must resend; its
refusal parts (`response.refusal.*`) are `{"type": "refusal", "refusal": text}` parts among its
text parts, by content index. Server data of any type never raises: a `phase` that is not the
string "commentary" is no commentary, and a refusal part whose `refusal` is not a string holds
no refusal text.

Tool calls: which output items are calls the client must execute is data, here, for both the
stream-attempt machine (which stops delivering answer text after one) and `tool_calls_of` (which
lists them). `CLIENT_CALL_TYPES` are the candidates; everything else (web and file search, code
interpreter, image generation, MCP items, ...) the server ran itself. Two rules take candidates
back (`is_client_call`):

- a built-in call of `HOSTED_CALL_TYPES` whose output item (`<type>_output`, same `call_id`; a
  `local_shell_call_output` names the call by its `id`) is in the same response: a hosted shell
  or patch the server already ran;
- a `custom_tool_call` whose name the response's `tools` do not declare as a `custom` tool,
  while those tools name at least one tool (xAI reports its server-side searches this way). With
  no tools to judge by, or a call whose name is unknown (never announced), it is the client's.
"""

from __future__ import annotations

from collections.abc import Container, Iterator, Mapping
from typing import Any, Final

import attrs

from machines.json_text import sorted_json_text
from machines.text_pieces import JOIN_AT, add_piece

__all__ = [
    "ARGUMENT_FIELDS",
    "Moves",
    "CLIENT_CALL_TYPES",
    "COMMENTARY",
    "HOSTED_CALL_TYPES",
    "OUTPUT_ITEM_TYPES",
    "Answer",
    "CallFacts",
    "OutputAssembly",
    "answer_of",
    "call_facts_of",
    "declared_custom_tools",
    "is_client_call",
    "is_commentary",
    "item_type",
    "join_output_text",
    "output_key",
    "tool_calls_of",
]

#: Output item types that are calls the client may have to execute (`TurnResult.tool_calls`).
CLIENT_CALL_TYPES: Final = frozenset(
    {"function_call", "custom_tool_call", "local_shell_call", "shell_call", "apply_patch_call"}
)
#: Built-in call types the server may also run itself: such a call is the server's when its
#: output item is in the same response.
HOSTED_CALL_TYPES: Final = frozenset({"local_shell_call", "shell_call", "apply_patch_call"})
#: The output item type that reports a hosted call as executed -> that call's type.
OUTPUT_ITEM_TYPES: Final[Mapping[str, str]] = {f"{kind}_output": kind for kind in HOSTED_CALL_TYPES}
#: Where each call type keeps what `tool_calls` lists as its `arguments`: a string field taken as
#: it is (`function_call`, `custom_tool_call`), or an object written as JSON (the built-in calls).
ARGUMENT_FIELDS: Final[Mapping[str, str]] = {
    "function_call": "arguments",
    "custom_tool_call": "input",
    "local_shell_call": "action",
    "shell_call": "action",
    "apply_patch_call": "operation",
}

#: What decides whether a call is the client's: its item type, name and call_id.
CallFacts = tuple[str, Any, Any]

#: Places an item event moved, in order: (from index, to index).
Moves = tuple[tuple[int, int], ...]


def declared_custom_tools(tools: Any) -> frozenset[str] | None:
    """The names of the `custom` tools a response's `tools` list declares, or None when the list
    names no tool at all (absent, not a list, empty): then no custom tool call can be ruled out."""
    if not isinstance(tools, list):
        return None
    entries = [tool for tool in tools if isinstance(tool, dict)]
    if not entries:
        return None
    return frozenset(
        tool["name"]
        for tool in entries
        if tool.get("type") == "custom" and isinstance(tool.get("name"), str)
    )


def output_key(item: Mapping[str, Any]) -> tuple[str, str] | None:
    """For an output item that reports a hosted call as executed: (the call's type, its call_id);
    None for any other item."""
    kind = OUTPUT_ITEM_TYPES.get(item_type(item) or "")
    if kind is None:
        return None
    call_id = item.get("call_id")
    if not isinstance(call_id, str):
        call_id = item.get("id")  # a local_shell_call_output names its call by `id`
    return (kind, call_id) if isinstance(call_id, str) else None


def is_client_call(
    facts: CallFacts,
    *,
    custom_tools: frozenset[str] | None,
    outputs: Container[tuple[str, str]],
) -> bool:
    """Whether a call with these facts (type, name, call_id) is one the client must execute, given
    the declared custom tools (`declared_custom_tools`) and the hosted calls whose output items
    were seen (`output_key`)."""
    kind, name, call_id = facts
    if kind == "function_call":
        return True
    if kind == "custom_tool_call":
        return custom_tools is None or not isinstance(name, str) or name in custom_tools
    if kind in HOSTED_CALL_TYPES:
        return not (isinstance(call_id, str) and (kind, call_id) in outputs)
    return False


def item_type(item: Mapping[str, Any]) -> str | None:
    """The item's `type` when it is a string (server data: it may be anything)."""
    kind = item.get("type")
    return kind if isinstance(kind, str) else None


def call_facts_of(item: Mapping[str, Any]) -> CallFacts | None:
    """Type, name and call_id of an item that may be a client call, or None for any other item."""
    kind = item_type(item)
    if kind not in CLIENT_CALL_TYPES:
        return None
    assert kind is not None
    return kind, item.get("name"), item.get("call_id")


def _kind_of(kind: Any) -> str:
    """An announced item's kind: its type when that is a string, a message when the type is
    missing or empty, and a kind of no known item for any other value (a list, a number: never
    turned into text, which for data nested a thousand levels deep would exceed the
    interpreter's recursion limit)."""
    if isinstance(kind, str) and kind:
        return kind
    return "message" if not kind else "unknown"


def _part(index: Any) -> int:
    """A content, summary or command index as sent, or 0 for anything that is not an integer (a
    string or a list there must not break the assembly)."""
    return index if type(index) is int else 0


class _PartialItem:
    __slots__ = (
        "added", "item_id", "kind", "parts", "refusals", "arguments", "arguments_done", "summary",
        "commands",
    )
    #: What an item accumulates from its events (everything but what its announcement says).
    ACCUMULATED = ("parts", "refusals", "arguments", "arguments_done", "summary", "commands")

    def __init__(self, kind: str, item_id: str | None, added: dict[str, Any] | None) -> None:
        self.kind = kind
        self.item_id = item_id
        self.added = added
        # text pieces, joined as they grow (`machines.text_pieces`) and whole when built
        self.parts: dict[int, list[str]] = {}  # content_index -> text pieces
        self.refusals: dict[int, list[str]] = {}  # content_index -> refusal pieces
        self.arguments: list[str] = []
        self.arguments_done: str | None = None
        self.summary: dict[int, list[str]] = {}  # reasoning summary/text index -> pieces
        self.commands: dict[int, list[str]] = {}  # shell call command index -> pieces

    def facts(self) -> CallFacts | None:
        if self.kind not in CLIENT_CALL_TYPES:
            return None
        added = self.added or {}
        return self.kind, added.get("name"), added.get("call_id")

    def build(self, status: str) -> dict[str, Any]:
        base = dict(self.added) if self.added else {}
        if self.kind in ("function_call", "custom_tool_call"):
            # the streamed text: a function call's arguments, a custom tool call's raw input
            arguments = (
                self.arguments_done if self.arguments_done is not None else "".join(self.arguments)
            )
            base.setdefault("type", self.kind)
            if self.item_id is not None:
                base.setdefault("id", self.item_id)
            base[ARGUMENT_FIELDS[self.kind]] = arguments
            base["status"] = "completed" if self.arguments_done is not None else status
            return base
        if self.kind in HOSTED_CALL_TYPES:
            base.setdefault("type", self.kind)
            if self.item_id is not None:
                base.setdefault("id", self.item_id)
            if self.commands:
                action = base.get("action")
                base["action"] = {
                    **(action if isinstance(action, dict) else {}),
                    "commands": ["".join(self.commands[i]) for i in sorted(self.commands)],
                }
            base["status"] = status
            return base
        if self.kind == "reasoning":
            base.setdefault("type", "reasoning")
            if self.item_id is not None:
                base.setdefault("id", self.item_id)
            base["summary"] = [
                {"type": "summary_text", "text": "".join(self.summary[i])}
                for i in sorted(self.summary)
            ]
            return base
        if self.kind != "message" and base:
            # any other item the server announced (a search, an output item, ...): as announced
            if "status" in base:
                base["status"] = status
            return base
        base.setdefault("type", "message")
        if self.item_id is not None:
            base.setdefault("id", self.item_id)
        base.setdefault("role", "assistant")
        base["status"] = status
        content = [
            (i, 0, {"type": "output_text", "text": "".join(self.parts[i]), "annotations": []})
            for i in self.parts
        ]
        content += [
            (i, 1, {"type": "refusal", "refusal": "".join(self.refusals[i])})
            for i in self.refusals
        ]
        base["content"] = [part for _, _, part in sorted(content, key=lambda c: c[:2])]
        return base


class OutputAssembly:
    """Output items of one attempt, by `output_index`."""

    __slots__ = ("_partial", "_done", "_index_of_id", "_next_index", "_outputs", "_floating")

    def __init__(self) -> None:
        self._partial: dict[int, _PartialItem] = {}
        self._done: dict[int, dict[str, Any]] = {}
        self._index_of_id: dict[str, int] = {}
        self._next_index = 0
        self._outputs: set[tuple[str, str]] = set()
        #: Places opened for an item id by events without an output index: index -> that id.
        self._floating: dict[int, str] = {}

    # -- placement -------------------------------------------------------------------------
    def _index(self, payload: dict[str, Any]) -> int:
        index = payload.get("output_index")
        if type(index) is int:  # a JSON integer: `true` is no index (though a Python int)
            if index >= self._next_index:
                self._next_index = index + 1
            return index
        item_id = payload.get("item_id")
        if item_id is None:
            item = payload.get("item")
            if isinstance(item, dict):
                item_id = item.get("id")
        if isinstance(item_id, str) and item_id in self._index_of_id:
            return self._index_of_id[item_id]
        # No index: a lone delta continues the newest item, anything else opens a new one.
        if item_id is None and "delta" in payload and self._next_index:
            return self._next_index - 1
        index = self._next_index
        self._next_index += 1
        if isinstance(item_id, str):
            self._index_of_id[item_id] = index
            self._floating[index] = item_id
        return index

    def _settle(self, payload: dict[str, Any], index: int, item_id: Any) -> Moves:
        """An item event that gives an output index (`index`): another item's floating place
        there moves to the next free index; then this item's own floating place moves here, when
        nothing is here yet (see the module docstring). Returns the moves made."""
        if type(payload.get("output_index")) is not int:
            return ()
        moves: list[tuple[int, int]] = []
        owner = self._floating.pop(index, None)
        if owner is not None and owner != item_id:
            free = self._next_index
            self._next_index += 1
            self._move(index, free)
            self._floating[free] = owner
            moves.append((index, free))
        own = self._index_of_id.get(item_id) if isinstance(item_id, str) else None
        if (
            own is not None
            and own != index
            and own in self._floating
            and index not in self._partial
            and index not in self._done
        ):
            del self._floating[own]
            self._move(own, index)
            moves.append((own, index))
        return tuple(moves)

    def _move(self, source: int, dest: int) -> None:
        """Everything placed at `source` is placed at `dest` from now on."""
        if source in self._partial:
            self._partial[dest] = self._partial.pop(source)
        if source in self._done:
            self._done[dest] = self._done.pop(source)
        for key, place in list(self._index_of_id.items()):
            if place == source:
                self._index_of_id[key] = dest

    def _partial_at(self, index: int, kind: str, payload: dict[str, Any]) -> _PartialItem:
        partial = self._partial.get(index)
        if partial is None:
            item_id = payload.get("item_id")
            partial = _PartialItem(kind, item_id if isinstance(item_id, str) else None, None)
            self._partial[index] = partial
            if partial.item_id is not None:
                self._index_of_id.setdefault(partial.item_id, index)
        return partial

    # -- events ------------------------------------------------------------------------------
    def item_added(self, payload: dict[str, Any]) -> tuple[int, dict[str, Any], Moves] | None:
        """`response.output_item.added`: open its item; returns its index, the item and the
        places moved (`_settle`), or None if it is not an object."""
        item = payload.get("item")
        if not isinstance(item, dict):
            return None
        index = self._index(payload)
        item_id = item.get("id")
        moved = self._settle(payload, index, item_id)
        partial = _PartialItem(
            _kind_of(item.get("type")), item_id if isinstance(item_id, str) else None, item
        )
        previous = self._partial.get(index)
        if previous is not None:  # events raced ahead of the announcement: keep all they said
            for name in _PartialItem.ACCUMULATED:
                setattr(partial, name, getattr(previous, name))
        self._partial[index] = partial
        if partial.item_id is not None:
            self._index_of_id[partial.item_id] = index
        self._note_output(item)
        return index, item, moved

    def item_done(self, payload: dict[str, Any]) -> tuple[int, dict[str, Any], Moves] | None:
        """`response.output_item.done`: its item becomes authoritative; returns its index, the
        item and the places moved (`_settle`), or None."""
        item = payload.get("item")
        if not isinstance(item, dict):
            return None
        index = self._index(payload)
        item_id = item.get("id")
        moved = self._settle(payload, index, item_id)
        self._done[index] = item
        if isinstance(item_id, str):
            self._index_of_id[item_id] = index
        self._note_output(item)
        return index, item, moved

    def _note_output(self, item: dict[str, Any]) -> None:
        key = output_key(item)
        if key is not None:
            self._outputs.add(key)

    def text_delta(self, payload: dict[str, Any], delta: str) -> int:
        """Append answer text to its item and content part; returns the item's index."""
        index = payload.get("output_index")
        if type(index) is int and index < self._next_index:
            # The hot path (every delta of an answer): an index already placed, an item and a
            # part already open, as `_index` and `_partial_at` would find them.
            partial = self._partial.get(index)
            if partial is not None:
                part = payload.get("content_index")
                parts = partial.parts.get(part if type(part) is int else 0)  # `_part`, inline
                if parts is not None:
                    if len(parts) < JOIN_AT - 1:
                        parts.append(delta)  # `add_piece` joins nothing before JOIN_AT pieces
                    else:
                        add_piece(parts, delta)
                    return index
        index = self._index(payload)
        partial = self._partial_at(index, "message", payload)
        content_index = _part(payload.get("content_index"))
        parts = partial.parts.get(content_index)
        if parts is None:
            partial.parts[content_index] = [delta]
        else:
            add_piece(parts, delta)
        return index

    def refusal_delta(self, payload: dict[str, Any], delta: str) -> None:
        """Append refusal text to its item's refusal part (`response.refusal.delta`)."""
        partial = self._partial_at(self._index(payload), "message", payload)
        add_piece(partial.refusals.setdefault(_part(payload.get("content_index")), []), delta)

    def refusal_done(self, payload: dict[str, Any], text: str) -> None:
        """`response.refusal.done`: the part's full refusal text replaces the deltas."""
        partial = self._partial_at(self._index(payload), "message", payload)
        partial.refusals[_part(payload.get("content_index"))] = [text]

    def text_done(self, payload: dict[str, Any]) -> None:
        """`response.output_text.done`: the part's full text replaces the deltas."""
        text = payload.get("text")
        if isinstance(text, str):
            partial = self._partial_at(self._index(payload), "message", payload)
            partial.parts[_part(payload.get("content_index"))] = [text]

    def reasoning_delta(self, payload: dict[str, Any], delta: str) -> None:
        """Append reasoning or reasoning-summary text to its item and part."""
        partial = self._partial_at(self._index(payload), "reasoning", payload)
        key = _part(payload.get("summary_index", payload.get("content_index")))
        add_piece(partial.summary.setdefault(key, []), delta)

    def arguments_delta(self, payload: dict[str, Any], delta: str) -> None:
        """Append function-call argument text to its item."""
        add_piece(self._partial_at(self._index(payload), "function_call", payload).arguments, delta)

    def arguments_done(self, payload: dict[str, Any]) -> None:
        """`response.function_call_arguments.done`: the full arguments replace the deltas."""
        arguments = payload.get("arguments")
        if isinstance(arguments, str):
            partial = self._partial_at(self._index(payload), "function_call", payload)
            partial.arguments_done = arguments
            name = payload.get("name")
            if isinstance(name, str) and partial.added is None:
                partial.added = {"type": "function_call", "name": name}

    def custom_input_delta(self, payload: dict[str, Any], delta: str) -> int:
        """Append custom-tool-call input text to its item; returns the item's index."""
        index = self._index(payload)
        add_piece(self._partial_at(index, "custom_tool_call", payload).arguments, delta)
        return index

    def custom_input_done(self, payload: dict[str, Any]) -> int:
        """`response.custom_tool_call_input.done`: the full input replaces the deltas; returns the
        item's index."""
        index = self._index(payload)
        partial = self._partial_at(index, "custom_tool_call", payload)
        text = payload.get("input")
        if isinstance(text, str):
            partial.arguments_done = text
        return index

    def shell_command(self, payload: dict[str, Any], text: str, *, replace: bool) -> int:
        """A command a shell call streams (`response.shell_call_command.*`): `text` is appended to
        the command at `command_index`, or replaces it (`replace`); returns the item's index."""
        index = self._index(payload)
        partial = self._partial_at(index, "shell_call", payload)
        key = _part(payload.get("command_index"))
        if replace or key not in partial.commands:
            partial.commands[key] = [text]
        else:
            add_piece(partial.commands[key], text)
        return index

    # -- calls -------------------------------------------------------------------------------
    @property
    def outputs(self) -> Container[tuple[str, str]]:
        """(call type, call_id) of every hosted call whose output item was streamed."""
        return self._outputs

    def call_facts(self, index: int) -> CallFacts | None:
        """Type, name and call_id of the call at `index` (its `done` item, else what streamed),
        or None when the item there is not a call."""
        done = self._done.get(index)
        if done is not None:
            return call_facts_of(done)
        partial = self._partial.get(index)
        return partial.facts() if partial is not None else None

    def calls(self) -> Iterator[tuple[int, CallFacts]]:
        """Every call item, by index: (index, facts)."""
        for index in sorted(self._done.keys() | self._partial.keys()):
            facts = self.call_facts(index)
            if facts is not None:
                yield index, facts

    def open_calls(self) -> Iterator[CallFacts]:
        """Facts of the calls announced (or streamed) whose `output_item.done` has not arrived."""
        for index, partial in self._partial.items():
            if index not in self._done:
                facts = partial.facts()
                if facts is not None:
                    yield facts

    # -- results -----------------------------------------------------------------------------
    def items(self, status: str = "completed") -> list[dict[str, Any]]:
        """Every item in output order: `done` items as sent, the rest rebuilt from deltas. A
        `done` item that states no phase gets the one its announcement stated (a phase is
        stated by a `phase` that is not null)."""
        out: list[dict[str, Any]] = []
        for index in sorted(self._done.keys() | self._partial.keys()):
            done = self._done.get(index)
            if done is None:
                out.append(self._partial[index].build(status))
                continue
            partial = self._partial.get(index)
            announced = partial.added if partial is not None else None
            if done.get("phase") is None and announced and announced.get("phase") is not None:
                done = {**done, "phase": announced["phase"]}
            out.append(done)
        return out

    def is_empty(self) -> bool:
        """True when the attempt streamed nothing that becomes an output item."""
        return not self._done and not self._partial



#: The `phase` of a message that is commentary (a preamble), not the answer.
COMMENTARY: Final = "commentary"


def is_commentary(item: Mapping[str, Any]) -> bool:
    """The item is labelled `phase: "commentary"` (any other phase, or none, or one that is not
    a string, is not)."""
    phase = item.get("phase")
    return type(phase) is str and phase == COMMENTARY


def _messages(items: list[Any] | None) -> Iterator[tuple[dict[str, Any], list[Any]]]:
    """Every `message` item and its content parts, in output order."""
    for item in items or ():
        if isinstance(item, dict) and item.get("type") == "message":
            content = item.get("content")
            yield item, content if isinstance(content, list) else []


def _part_text(part: Any, kind: str, field: str) -> str | None:
    """A content part's text: its `field` when the part is of type `kind` and that is a string."""
    if isinstance(part, dict) and part.get("type") == kind:
        text = part.get(field)
        if isinstance(text, str):
            return text
    return None


def join_output_text(items: list[Any] | None) -> str:
    """The openai SDK's `Response.output_text`, on plain JSON items."""
    texts: list[str] = []
    for _, content in _messages(items):
        for part in content:
            text = _part_text(part, "output_text", "text")
            if text is not None:
                texts.append(text)
    return "".join(texts)


@attrs.frozen(slots=True)
class Answer:
    """What the messages of an output say, told apart: the answer proper (the `output_text`
    parts of messages whose phase is not commentary, joined), each commentary message's text,
    and every refusal part's text joined (None: no refusal part)."""

    answer_text: str
    commentary: list[str]
    refusal: str | None


def answer_of(items: list[Any] | None) -> Answer:
    """The answer, commentary and refusal of these output items (contract v3)."""
    answer: list[str] = []
    commentary: list[str] = []
    refusals: list[str] = []
    for item, content in _messages(items):
        commented = is_commentary(item)
        texts: list[str] = []
        for part in content:
            text = _part_text(part, "output_text", "text")
            if text is not None:
                texts.append(text)
            else:
                refused = _part_text(part, "refusal", "refusal")
                if refused is not None:
                    refusals.append(refused)
        if commented:
            commentary.append("".join(texts))
        else:
            answer += texts
    return Answer("".join(answer), commentary, "".join(refusals) if refusals else None)


def tool_calls_of(items: list[Any] | None, tools: Any = None) -> list[dict[str, Any]]:
    """`call_id`, `name`, `arguments`, `status` and `type` of every call the client must execute,
    in output order, judged by `is_client_call` with the response's `tools` list and the output
    items among `items`.

    `name` is the item's for function and custom tool calls, the type without `_call` for the
    built-in ones (`shell`, `local_shell`, `apply_patch`); `arguments` is the field named by
    `ARGUMENT_FIELDS`, a string as it is, an object as compact JSON with sorted keys ("" when it
    is missing). `status` is
    "incomplete" when the item says it was cut off (rebuilt from deltas that never finished), else
    "completed"."""
    custom_tools = declared_custom_tools(tools)
    outputs: set[tuple[str, str]] = set()
    for item in items or ():
        if isinstance(item, dict):
            key = output_key(item)
            if key is not None:
                outputs.add(key)
    calls: list[dict[str, Any]] = []
    for item in items or ():
        if not isinstance(item, dict):
            continue
        facts = call_facts_of(item)
        if facts is None or not is_client_call(facts, custom_tools=custom_tools, outputs=outputs):
            continue
        kind = facts[0]
        value = item.get(ARGUMENT_FIELDS[kind])
        if kind in HOSTED_CALL_TYPES:
            name: Any = kind.removesuffix("_call")
            arguments = "" if value is None else _json_text(value)
        else:
            name = item.get("name")
            arguments = value if isinstance(value, str) else ""
        calls.append(
            {
                "call_id": item.get("call_id"),
                "name": name,
                "arguments": arguments,
                "status": (
                    "incomplete"
                    if item.get("status") in ("incomplete", "in_progress")
                    else "completed"
                ),
                "type": kind,
            }
        )
    return calls


def _json_text(value: Any) -> str:
    """`value` as compact ASCII JSON with sorted keys, so the same object gives the same text
    whether it came as bytes or through the SDK's models (server data of any shape, lone
    surrogates included: never raises, the same at any recursion limit)."""
    return sorted_json_text(value)
