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
