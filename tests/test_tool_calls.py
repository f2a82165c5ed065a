"""Tool calls of every kind: which output items are calls the client must execute (CONTRACT v2,
the `tool_calls` row), how they are listed, and how they gate answer text within an attempt."""

from __future__ import annotations

import json
from typing import Any

import pytest

import engine
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
from machines.output import declared_custom_tools, is_client_call, tool_calls_of
from machines.records import TransportFault


class Seen:
    """What the callbacks received."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.first = 0

    @property
    def callbacks(self) -> engine.Callbacks:
        def first() -> None:
            self.first += 1

        return engine.Callbacks(on_first_delta=first, on_text_delta=self.text.append)


def consume(*pieces: Any, seen: Seen | None = None) -> engine.TurnResult:
    """One attempt over the SSE bytes of `pieces` (builder results, events, faults end it)."""
    chunks = [encode_part(part) for part in assemble(*pieces)
              if not isinstance(part, TransportFault)]
    return engine.consume(chunks, callbacks=(seen or Seen()).callbacks)


def path(result: engine.TurnResult) -> list[tuple[str, str, str]]:
    return [(t.source, t.dest, t.trigger) for t in result.transitions
            if t.machine == "stream_attempt"]


SEARCH_TOOLS = [{"type": "web_search"}]
OPERATION = {"type": "create_file", "path": "notes.md", "diff": "+hello\n"}


# -- the listing -------------------------------------------------------------------------------

def _done(*pieces: list[StreamPart]) -> list[dict[str, Any]]:
    return output_items(*pieces)


def test_every_client_kind_is_listed_in_output_order_with_the_contracts_mapping() -> None:
    items = _done(
        function_call("get_weather", '{"city":"Oslo"}', output_index=0),
        custom_tool_call("apply_patch", "*** Begin Patch\n*** End Patch\n", output_index=1),
        local_shell_call(["ls"], output_index=2),
        shell_call(["pwd", "ls -a"], output_index=3),
        apply_patch_call(OPERATION, output_index=4),
    )
    calls = tool_calls_of(items, [WEATHER_TOOL, APPLY_PATCH_TOOL])
    assert [(c["type"], c["name"], c["call_id"], c["status"]) for c in calls] == [
        ("function_call", "get_weather", "call_00_sim", "completed"),
        ("custom_tool_call", "apply_patch", "call_01_sim", "completed"),
        ("local_shell_call", "local_shell", "call_02_sim", "completed"),
        ("shell_call", "shell", "call_03_sim", "completed"),
        ("apply_patch_call", "apply_patch", "call_04_sim", "completed"),
    ]
    assert calls[0]["arguments"] == '{"city":"Oslo"}'
    assert calls[1]["arguments"] == "*** Begin Patch\n*** End Patch\n"  # raw, not JSON
    assert json.loads(calls[2]["arguments"]) == items[2]["action"]
    assert json.loads(calls[3]["arguments"]) == items[3]["action"]
    assert json.loads(calls[3]["arguments"])["commands"] == ["pwd", "ls -a"]
    assert json.loads(calls[4]["arguments"]) == OPERATION


@pytest.mark.parametrize("item", [
    {"type": "web_search_call", "id": "ws_1", "status": "completed",
     "action": {"type": "search", "query": "q"}},
    {"type": "file_search_call", "id": "fs_1", "queries": ["q"], "status": "completed"},
    {"type": "code_interpreter_call", "id": "ci_1", "code": "1", "container_id": "c",
     "outputs": [], "status": "completed"},
    {"type": "image_generation_call", "id": "ig_1", "result": None, "status": "completed"},
    {"type": "mcp_call", "id": "mcp_1", "arguments": "{}", "name": "f", "server_label": "s"},
    {"type": "mcp_list_tools", "id": "mcpl_1", "server_label": "s", "tools": []},
])
def test_server_executed_items_are_never_listed(item: dict[str, Any]) -> None:
    assert tool_calls_of([item]) == []


@pytest.mark.parametrize(("call", "output"), [
    (local_shell_call(["ls"], output_index=0),
     local_shell_call_output("call_00_sim", "{}", output_index=1)),
    (shell_call(["ls"], output_index=0),
     shell_call_output("call_00_sim", [("a\n", "", 0)], output_index=1)),
    (apply_patch_call(OPERATION, output_index=0),
     apply_patch_call_output("call_00_sim", "Created notes.md", output_index=1)),
])
def test_a_hosted_call_with_its_output_in_the_response_is_the_servers(
    call: list[dict[str, Any]], output: list[dict[str, Any]]
) -> None:
    assert tool_calls_of(_done(call, output)) == []
    assert tool_calls_of(_done(output, call)) == []  # wherever the output item stands
    assert len(tool_calls_of(_done(call))) == 1
    other = [{**item, "call_id": "call_other", "id": "call_other"} for item in _done(output)]
    assert len(tool_calls_of([*_done(call), *other])) == 1  # another call's output


@pytest.mark.parametrize(("tools", "listed"), [
    (None, True),                                   # nothing to judge by
    ([], True),
    (["web_search"], True),                         # no tool objects at all
    ([APPLY_PATCH_TOOL], True),                     # declared as a custom tool
    (SEARCH_TOOLS, False),                          # the list names other tools only
    ([{"type": "function", "name": "apply_patch", "parameters": {}}], False),  # not *custom*
    ([{"type": "custom", "name": "other"}], False),
])
def test_a_custom_tool_call_is_the_clients_unless_the_tools_do_not_declare_it(
    tools: Any, listed: bool
) -> None:
    items = _done(custom_tool_call("apply_patch", "raw"))
    assert (tool_calls_of(items, tools) != []) is listed


def test_decisions_on_server_data_of_any_shape_never_raise() -> None:
    weird: list[Any] = [
        None, 3, "x", [], {"type": ["function_call"]}, {"type": {"a": 1}, "call_id": []},
        {"type": "shell_call", "call_id": ["x"], "action": {"n": float("inf")}},
        {"type": "shell_call_output", "call_id": {"x": 1}},
        {"type": "custom_tool_call", "name": ["n"], "input": 5},
        {"type": "apply_patch_call", "call_id": "c", "operation": "\ud800"},
    ]
    calls = tool_calls_of(weird, [{"type": "custom", "name": ["n"]}, 7])
    assert [c["type"] for c in calls] == ["shell_call", "custom_tool_call", "apply_patch_call"]
    assert calls[1]["arguments"] == ""
    assert calls[2]["arguments"] == '"\\ud800"'
    assert declared_custom_tools({"tools": 1}) is None
    assert is_client_call(("custom_tool_call", None, None), custom_tools=frozenset(), outputs=())


# -- the machine: text after a client call, and after a call the server ran ------------------------

def test_text_after_a_custom_tool_call_is_kept_but_not_delivered() -> None:
    seen = Seen()
    before = text_message("Let me patch it.", output_index=0)
    call = custom_tool_call("apply_patch", "*** Begin Patch\n", output_index=1)
    after = text_message("Done.", output_index=2)
    result = consume(created(tools=[APPLY_PATCH_TOOL]), before, call, after,
                     completed(output_items(before, call, after), tools=[APPLY_PATCH_TOOL]),
                     seen=seen)
    assert "".join(seen.text) == "Let me patch it."
    assert result.output_text == "Let me patch it.Done."
    assert [c["name"] for c in result.tool_calls] == ["apply_patch"]


def test_custom_tool_input_deltas_are_assembled_and_a_drop_leaves_the_call_incomplete() -> None:
    call = custom_tool_call("apply_patch", "*** Begin Patch\n*** End Patch\n", deltas=4,
                            finished=False)
    result = consume(created(), call, TransportFault("drop"))
    assert result.outcome == "error"
    assert result.tool_calls == [{
        "call_id": "call_00_sim", "name": "apply_patch", "status": "incomplete",
        "arguments": "*** Begin Patch\n*** End Patch\n", "type": "custom_tool_call",
    }]
    assert path(result)[-2:] == [("streaming", "tool_call", "tool_call_started"),
                                 ("tool_call", "retire", "eof")]


def test_the_input_done_frame_is_authoritative_when_the_item_never_finishes() -> None:
    call = custom_tool_call("apply_patch", "full input", deltas=2)
    without_item_done = [event for event in call
                         if event["type"] != "response.output_item.done"]
    result = consume(created(), without_item_done, completed([]))
    assert result.tool_calls[0]["arguments"] == "full input"
    assert result.tool_calls[0]["status"] == "completed"
    assert result.response is not None
    assert result.response["output"][0]["input"] == "full input"


def test_undeclared_custom_calls_with_known_tools_never_stop_text() -> None:
    seen = Seen()
    search = custom_tool_call("x_keyword_search", '{"query":"q"}', output_index=0)
    answer = text_message("Found it.", output_index=1)
    result = consume(created(tools=SEARCH_TOOLS), search, answer,
                     completed(output_items(search, answer), tools=SEARCH_TOOLS), seen=seen)
    assert "".join(seen.text) == "Found it." and seen.first == 1
    assert result.tool_calls == []
    assert "tool_call" not in {dest for _, dest, _ in path(result)}


def test_a_tools_list_that_arrives_later_withdraws_an_undeclared_custom_call() -> None:
    seen = Seen()
    search = custom_tool_call("x_keyword_search", '{"query":"q"}', output_index=0,
                              finished=False)
    early = text_message("Paris", deltas=1, output_index=1, finished=False)
    result = consume(created(), search, early, in_progress(tools=SEARCH_TOOLS),
                     text_message(" it is.", deltas=1, output_index=2), completed([]), seen=seen)
    assert path(result) == [
        ("awaiting_created", "streaming", "created"),
        ("streaming", "tool_call", "tool_call_started"),
        ("tool_call", "streaming", "tool_call_withdrawn"),
        ("streaming", "terminal", "completed"),
    ]
    assert seen.text == ["Paris", " it is."]  # held back, then delivered in order
    assert result.tool_calls == []


def test_a_tools_list_that_declares_a_call_later_makes_it_the_clients() -> None:
    seen = Seen()
    call = custom_tool_call("apply_patch", "raw", output_index=0)
    result = consume(created(tools=SEARCH_TOOLS), call, in_progress(tools=[APPLY_PATCH_TOOL]),
                     text_message("after", output_index=1), completed([]), seen=seen)
    assert seen.text == []
    assert ("streaming", "tool_call", "tool_call_started") in path(result)
    assert [c["name"] for c in result.tool_calls] == ["apply_patch"]


def test_a_hosted_shell_withdraws_its_call_and_delivers_the_text_held_back() -> None:
    seen = Seen()
    call = shell_call(["ls"], output_index=0)
    between = text_message("Running it. ", output_index=1)
    output = shell_call_output("call_00_sim", [("a\n", "", 0)], output_index=2)
    answer = text_message("It printed a.", output_index=3)
    result = consume(created(), call, between, output, answer,
                     completed(output_items(call, between, output, answer)), seen=seen)
    assert "".join(seen.text) == "Running it. It printed a." and seen.first == 1
    assert result.tool_calls == []
    assert ("streaming", "streaming", "tool_call_withdrawn") in path(result)


def test_a_withdrawn_call_next_to_a_client_call_keeps_text_held_back() -> None:
    seen = Seen()
    hosted = shell_call(["ls"], output_index=0)
    call = function_call("get_weather", "{}", output_index=1)
    output = shell_call_output("call_00_sim", [("a\n", "", 0)], output_index=2)
    answer = text_message("Weather next.", output_index=3)
    result = consume(created(), hosted, call, output, answer,
                     completed(output_items(hosted, call, output, answer)), seen=seen)
    assert seen.text == []
    assert [c["type"] for c in result.tool_calls] == ["function_call"]
    assert ("streaming", "streaming", "tool_call_withdrawn") not in path(result)


def test_an_output_for_an_open_hosted_call_returns_to_streaming() -> None:
    seen = Seen()
    announced = shell_call(["ls"], output_index=0, finished=False)
    other = function_call("f", "{}", output_index=1)
    output = shell_call_output("call_00_sim", [("", "", 0)], output_index=2)
    result = consume(created(), other, announced, output, completed([]), seen=seen)
    assert path(result)[-2:] == [("tool_call", "streaming", "tool_call_withdrawn"),
                                 ("streaming", "terminal", "completed")]


def test_shell_commands_streamed_without_a_done_item_are_kept() -> None:
    call = shell_call(["git status", "ls"], output_index=0, finished=False)
    result = consume(created(), call, completed([]))
    [listed] = result.tool_calls
    assert json.loads(listed["arguments"])["commands"] == ["git status", "ls"]
    assert listed["status"] == "completed"  # the response completed


def test_an_output_item_only_the_stream_carried_still_withdraws_the_call() -> None:
    call = shell_call(["ls"], output_index=0)
    output = shell_call_output("call_00_sim", [("", "", 0)], output_index=1)
    result = consume(created(), call, output, completed(output_items(call)))
    assert result.tool_calls == []


def test_a_streamed_call_the_final_output_left_out_is_still_listed() -> None:
    first = apply_patch_call(OPERATION, output_index=0)
    second = local_shell_call(["ls"], output_index=1)
    result = consume(created(), first, second, completed(output_items(first)))
    assert [c["type"] for c in result.tool_calls] == ["apply_patch_call", "local_shell_call"]


def test_the_terminal_responses_tools_judge_the_listing() -> None:
    search = custom_tool_call("x_keyword_search", "q", output_index=0)
    result = consume(created(), search, completed(output_items(search), tools=SEARCH_TOOLS))
    assert result.tool_calls == []


def test_a_custom_input_frame_racing_ahead_of_its_item_is_judged_when_the_item_comes() -> None:
    seen = Seen()
    added, delta, done_input, done = custom_tool_call("x_keyword_search", "q", deltas=1)
    answer = text_message("Answer.", output_index=1)
    result = consume(created(tools=SEARCH_TOOLS), delta, added, done_input, done, answer,
                     completed([]), seen=seen)
    assert "".join(seen.text) == "Answer."
    assert result.tool_calls == []
    assert ("tool_call", "streaming", "tool_call_withdrawn") in path(result)
