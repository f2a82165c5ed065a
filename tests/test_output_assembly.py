"""The output assembly on its own: what it keeps of each kind of frame, whatever the server sends."""

from __future__ import annotations

from typing import Any

import pytest

from machines.output import OutputAssembly


@pytest.mark.parametrize("index", [[1], {"a": 1}, "1", 1.5, None])
def test_part_indexes_that_are_not_integers_count_as_part_zero(index: Any) -> None:
    assembly = OutputAssembly()
    assembly.text_delta({"output_index": 0, "content_index": index}, "Hel")
    assembly.text_delta({"output_index": 0, "content_index": 0}, "lo")
    assembly.reasoning_delta({"output_index": 1, "summary_index": index}, "why")
    assembly.text_done({"output_index": 2, "content_index": index, "text": "done"})
    message, reasoning, done = assembly.items()
    assert message["content"][0]["text"] == "Hello"
    assert reasoning["summary"] == [{"type": "summary_text", "text": "why"}]
    assert done["content"][0]["text"] == "done"


def test_announced_items_never_finished_are_rebuilt_as_their_own_kind() -> None:
    assembly = OutputAssembly()
    assembly.item_added({"output_index": 0,
                         "item": {"type": "web_search_call", "id": "ws", "status": "in_progress"}})
    assembly.item_added({"output_index": 1, "item": {
        "type": "shell_call", "id": "sh", "call_id": "c", "action": {"commands": [], "timeout_ms": 9},
        "status": "in_progress"}})
    assembly.shell_command({"output_index": 1, "command_index": 0}, "", replace=True)
    assembly.shell_command({"output_index": 1, "command_index": 0}, "ls", replace=False)
    assembly.shell_command({"output_index": 1, "command_index": 0}, " -a", replace=False)
    assembly.shell_command({"output_index": 1, "command_index": 1}, "pwd", replace=True)
    assembly.custom_input_delta({"output_index": 2, "item_id": "ctc"}, "ra")
    assembly.custom_input_delta({"output_index": 2, "item_id": "ctc"}, "w")
    assert assembly.items("incomplete") == [
        {"type": "web_search_call", "id": "ws", "status": "incomplete"},
        {"type": "shell_call", "id": "sh", "call_id": "c", "status": "incomplete",
         "action": {"commands": ["ls -a", "pwd"], "timeout_ms": 9}},
        {"type": "custom_tool_call", "id": "ctc", "input": "raw", "status": "incomplete"},
    ]
    assert [index for index, _ in assembly.calls()] == [1, 2]
    assert list(assembly.open_calls()) == [("shell_call", None, "c"), ("custom_tool_call", None, None)]


def _message(item_id: str, text: str, **phase: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}], **phase}


def test_content_addressed_by_item_id_alone_joins_its_item_where_the_item_says() -> None:
    """A relay that left out the item at output index 0 and addresses the next one's deltas by
    item_id only: the deltas took the first free place (0), the finished item says 1; the item is
    one, at 1, not two."""
    assembly = OutputAssembly()
    assert assembly.text_delta({"item_id": "m1", "content_index": 0}, "Hi") == 0
    placed = assembly.item_done({"output_index": 1, "item": _message("m1", "Hi")})
    assert placed is not None and placed[0] == 1 and placed[2] == ((0, 1),)
    assert assembly.items() == [_message("m1", "Hi")]


def test_an_item_that_says_its_place_moves_another_items_floating_content_out_of_the_way() -> None:
    assembly = OutputAssembly()
    assembly.text_delta({"item_id": "m1", "content_index": 0}, "One")  # floating at 0
    placed = assembly.item_added({"output_index": 0, "item": {"id": "m0", "type": "message",
                                                               "phase": "commentary"}})
    assert placed is not None and placed[2] == ((0, 1),)  # m1's text went to 1
    assembly.text_delta({"output_index": 0, "item_id": "m0", "content_index": 0}, "Zero")
    placed = assembly.item_done({"output_index": 1, "item": _message("m1", "One")})
    assert placed is not None and placed[2] == ()  # already there
    first, second = assembly.items("incomplete")
    assert (first["id"], first["phase"], first["content"][0]["text"]) == ("m0", "commentary", "Zero")
    assert second == _message("m1", "One")
