"""Output assembly: the response's output items, rebuilt from what one attempt streamed.

The stream-attempt machine decides *which* events count; this module only keeps their content,
keyed by `output_index` (events without one are placed by their `item_id`, else appended):

- `output_item.added` opens an item; `output_item.done` makes its item authoritative;
- text, reasoning and function-argument deltas accumulate per item (and per content part);
  `*.done` events carry the authoritative full value;
- `items()` lists every item in `output_index` order: the server's `done` item where there is one,
  otherwise one built from the accumulated deltas. So a function call that was announced and
  streamed but never `done` is kept, and text that streamed without any item event still becomes a
  completed assistant message.

Pure data, no I/O. `output_text()` joins text exactly as the openai SDK's `Response.output_text`
does (every `output_text` part of every `message` item, in output order).
"""

from __future__ import annotations

from typing import Any

__all__ = ["OutputAssembly", "join_output_text", "tool_calls_of"]


def _part(index: Any) -> int:
    """A content, summary or command index as sent, or 0 for anything that is not an integer (a
    string or a list there must not break the assembly)."""
    return index if type(index) is int else 0


class _PartialItem:
    __slots__ = ("added", "item_id", "kind", "parts", "arguments", "arguments_done", "summary")

    def __init__(self, kind: str, item_id: str | None, added: dict[str, Any] | None) -> None:
        self.kind = kind
        self.item_id = item_id
        self.added = added
        self.parts: dict[int, list[str]] = {}  # content_index -> text pieces (joined lazily)
        self.arguments: list[str] = []
        self.arguments_done: str | None = None
        self.summary: dict[int, list[str]] = {}  # reasoning summary/text index -> pieces

    def build(self, status: str) -> dict[str, Any]:
        base = dict(self.added) if self.added else {}
        if self.kind == "function_call":
            arguments = (
                self.arguments_done if self.arguments_done is not None else "".join(self.arguments)
            )
            base.setdefault("type", "function_call")
            if self.item_id is not None:
                base.setdefault("id", self.item_id)
            base["arguments"] = arguments
            base["status"] = "completed" if self.arguments_done is not None else status
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
        base.setdefault("type", "message")
        if self.item_id is not None:
            base.setdefault("id", self.item_id)
        base.setdefault("role", "assistant")
        base["status"] = status
        base["content"] = [
            {"type": "output_text", "text": "".join(self.parts[i]), "annotations": []}
            for i in sorted(self.parts)
        ]
        return base


class OutputAssembly:
    """Output items of one attempt, by `output_index`."""

    __slots__ = ("_partial", "_done", "_index_of_id", "_next_index")

    def __init__(self) -> None:
        self._partial: dict[int, _PartialItem] = {}
        self._done: dict[int, dict[str, Any]] = {}
        self._index_of_id: dict[str, int] = {}
        self._next_index = 0

    # -- placement -------------------------------------------------------------------------
    def _index(self, payload: dict[str, Any]) -> int:
        index = payload.get("output_index")
        if isinstance(index, int):
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
        return index

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
    def item_added(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        """`response.output_item.added`: open its item; returns the item, or None if it is not an object."""
        item = payload.get("item")
        if not isinstance(item, dict):
            return None
        index = self._index(payload)
        item_id = item.get("id")
        partial = _PartialItem(
            str(item.get("type") or "message"), item_id if isinstance(item_id, str) else None, item
        )
        previous = self._partial.get(index)
        if previous is not None:  # deltas raced ahead of the announcement: keep them
            partial.parts, partial.arguments, partial.summary = (
                previous.parts,
                previous.arguments,
                previous.summary,
            )
        self._partial[index] = partial
        if partial.item_id is not None:
            self._index_of_id[partial.item_id] = index
        return item

    def item_done(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        """`response.output_item.done`: its item becomes authoritative; returns it, or None."""
        item = payload.get("item")
        if not isinstance(item, dict):
            return None
        index = self._index(payload)
        self._done[index] = item
        item_id = item.get("id")
        if isinstance(item_id, str):
            self._index_of_id[item_id] = index
        return item

    def text_delta(self, payload: dict[str, Any], delta: str) -> None:
        """Append answer text to its item and content part."""
        partial = self._partial_at(self._index(payload), "message", payload)
        content_index = _part(payload.get("content_index"))
        parts = partial.parts.get(content_index)
        if parts is None:
            partial.parts[content_index] = [delta]
        else:
            parts.append(delta)

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
        partial.summary.setdefault(key, []).append(delta)

    def arguments_delta(self, payload: dict[str, Any], delta: str) -> None:
        """Append function-call argument text to its item."""
        self._partial_at(self._index(payload), "function_call", payload).arguments.append(delta)

    def arguments_done(self, payload: dict[str, Any]) -> None:
        """`response.function_call_arguments.done`: the full arguments replace the deltas."""
        arguments = payload.get("arguments")
        if isinstance(arguments, str):
            partial = self._partial_at(self._index(payload), "function_call", payload)
            partial.arguments_done = arguments
            name = payload.get("name")
            if isinstance(name, str) and partial.added is None:
                partial.added = {"type": "function_call", "name": name}

    # -- results -----------------------------------------------------------------------------
    def items(self, status: str = "completed") -> list[dict[str, Any]]:
        """Every item in output order: `done` items as sent, the rest rebuilt from deltas."""
        out: list[dict[str, Any]] = []
        for index in sorted(self._done.keys() | self._partial.keys()):
            done = self._done.get(index)
            out.append(done if done is not None else self._partial[index].build(status))
        return out

    def is_empty(self) -> bool:
        """True when the attempt streamed nothing that becomes an output item."""
        return not self._done and not self._partial

    def open_function_calls(self) -> int:
        """Function calls announced (or streamed) whose `output_item.done` has not arrived."""
        return sum(
            1
            for index, partial in self._partial.items()
            if partial.kind == "function_call" and index not in self._done
        )


def join_output_text(items: list[Any] | None) -> str:
    """The openai SDK's `Response.output_text`, on plain JSON items."""
    texts: list[str] = []
    for item in items or ():
        if isinstance(item, dict) and item.get("type") == "message":
            for part in item.get("content") or ():
                if isinstance(part, dict) and part.get("type") == "output_text":
                    text = part.get("text")
                    if isinstance(text, str):
                        texts.append(text)
    return "".join(texts)


def tool_calls_of(items: list[Any] | None) -> list[dict[str, Any]]:
    """`call_id`, `name`, `arguments`, `status` and `type` of every function call item, in output
    order. `status` is "incomplete" when the item says it was cut off (rebuilt from deltas whose
    arguments never finished), else "completed"."""
    calls: list[dict[str, Any]] = []
    for item in items or ():
        if isinstance(item, dict) and item.get("type") == "function_call":
            arguments = item.get("arguments")
            calls.append(
                {
                    "call_id": item.get("call_id"),
                    "name": item.get("name"),
                    "arguments": arguments if isinstance(arguments, str) else "",
                    "status": (
                        "incomplete"
                        if item.get("status") in ("incomplete", "in_progress")
                        else "completed"
                    ),
                    "type": "function_call",
                }
            )
    return calls
