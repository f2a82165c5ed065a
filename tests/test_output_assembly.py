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
