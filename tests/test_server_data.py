"""Server data of any JSON shape or type never raises, and JSON that one parser refuses is still
read (contract v2: never raise)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, TypeVar

import engine

T = TypeVar("T")


def frame(data: str, name: str = "message") -> bytes:
    return f"event: {name}\ndata: {data}\n\n".encode()


CREATED = frame('{"type":"response.created","response":{"id":"r1","output":[]}}')


def test_numbers_and_escapes_orjson_refuses_still_decode() -> None:
    body = (
        CREATED
        + frame('{"type":"response.output_text.delta","output_index":0,"content_index":0,'
                '"delta":"odd \\ud800 text"}')
        + frame('{"type":"response.completed","response":{"id":"r1","output":[],'
                '"usage":{"total_tokens":1e999}}}')
    )
    result = engine.consume(body)
    assert result.outcome == "completed"
    assert result.output_text == "odd \ud800 text"


def test_indexes_of_any_type_never_raise() -> None:
    for index in ("[1]", '{"a":1}', '"2"', "1.5", "null", "true"):
        body = (
            CREATED
            + frame('{"type":"response.output_text.delta","output_index":0,"content_index":0,'
                    '"delta":"a"}')
            + frame('{"type":"response.output_text.delta","output_index":0,'
                    f'"content_index":{index},"delta":"b"}}')
            + frame('{"type":"response.reasoning_summary_text.delta","output_index":1,'
                    f'"summary_index":{index},"delta":"r"}}')
            + frame('{"type":"response.completed","response":{"id":"r1","output":null}}')
        )
        result = engine.consume(body)
        assert result.outcome == "completed", index
        assert "a" in result.output_text and "b" in result.output_text


def test_wrong_types_in_every_field_of_the_lifecycle_frames_never_raise() -> None:
    oddities = ["null", "1", '"x"', "[]", "{}", "true", "-1e308"]
    fields = ["response", "output", "error", "delta", "item", "output_index", "item_id", "code",
              "arguments", "text", "type"]
    for field in fields:
        for odd in oddities:
            body = (
                frame(f'{{"type":"response.created","{field}":{odd}}}')
                + frame(f'{{"type":"response.output_item.added","output_index":0,"{field}":{odd}}}')
                + frame(f'{{"type":"response.output_text.delta","{field}":{odd},"delta":"t"}}')
                + frame(f'{{"type":"response.function_call_arguments.delta","{field}":{odd}}}')
                + frame(f'{{"type":"response.failed","response":{{"error":{{"{field}":{odd}}}}}}}')
            )
            result = engine.consume(body)
            assert result.outcome in ("completed", "failed", "error"), (field, odd)


# -- found by the fuzzer (sessions() retype fields with values of every JSON type) -------------


def test_an_output_or_content_that_is_not_a_list_never_raises_and_is_backfilled() -> None:
    """`response.output: true` (or a number) made the result's assembly iterate a bool, and a
    message whose `content` is a number did the same; both are server data of the wrong type."""
    delta = frame('{"type":"response.output_text.delta","output_index":0,"content_index":0,'
                  '"delta":"kept"}')
    for odd in ("true", "1", "1.5", '"text"', '{"a":1}'):
        body = CREATED + delta + frame(
            f'{{"type":"response.completed","response":{{"id":"r1","output":{odd}}}}}')
        result = engine.consume(body)
        assert result.outcome == "completed", odd
        assert result.output_text == "kept", odd  # rebuilt from what streamed
        assert result.response is not None and isinstance(result.response["output"], list)
        done = frame('{"type":"response.output_item.done","output_index":0,'
                     f'"item":{{"type":"message","content":{odd}}}}}')
        completed = frame('{"type":"response.completed","response":{"id":"r1","output":'
                          f'[{{"type":"message","content":{odd}}}]}}}}')
        assert engine.consume(CREATED + delta + done + completed).output_text == "", odd


def _nested(depth: int) -> str:
    from engine.simulator.shapes import nested_json

    return nested_json(depth).decode()


def _at_recursion_limit(limit: int, run: Callable[[], T]) -> T:
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(limit)
    try:
        return run()
    finally:
        sys.setrecursionlimit(before)


def test_json_nested_deeper_than_orjson_reads_is_refused_at_any_recursion_limit(
    tmp_path: Path,
) -> None:
    """orjson reads 1024 levels; the standard library, tried next, read deeper JSON only when
    the interpreter's recursion limit allowed it, so a `response.completed` 1100 levels deep
    completed the turn under a raised limit (as Hypothesis raises it) and was refused at the
    default one: the trace did not replay in `streamfsm replay`."""
    deep = frame('{"type":"response.completed","response":{"id":"r1","output":[],'
                 f'"metadata":{_nested(1100)}}}}}')
    read = frame('{"type":"response.completed","response":{"id":"r1","output":[],'
                 f'"metadata":{_nested(1000)},"usage":{{"total_tokens":1e999}}}}}}')
    for body, outcome in ((CREATED + deep, "error"), (CREATED + read, "completed")):
        trace = tmp_path / "deep.jsonl"
        raised = _at_recursion_limit(20_000, lambda: engine.consume(body, trace=trace))
        default = _at_recursion_limit(1000, lambda: engine.consume(body))
        assert (raised.outcome, default.outcome) == (outcome, outcome)
        assert _at_recursion_limit(1000, lambda: engine.replay(trace).identical)


def test_values_nested_a_thousand_levels_deep_in_items_never_raise(tmp_path: Path) -> None:
    """An item whose `type` is a list nested 1000 levels deep was turned into text, which
    exceeds the default recursion limit; a built-in call's `action` that deep gave its
    arguments only under a raised limit."""
    deep = _nested(1000)
    body = (
        CREATED
        + frame(f'{{"type":"response.output_item.added","output_index":0,"item":{{"type":{deep}}}}}')
        + frame('{"type":"response.output_item.added","output_index":1,"item":{"type":'
                f'"local_shell_call","call_id":"c1","action":{deep}}}}}')
        + frame('{"type":"response.completed","response":{"id":"r1","output":[]}}')
    )
    trace = tmp_path / "deep.jsonl"
    at_default = _at_recursion_limit(1000, lambda: engine.consume(body, trace=trace))
    raised = _at_recursion_limit(20_000, lambda: engine.consume(body))
    assert at_default.outcome == raised.outcome == "completed"
    assert at_default.tool_calls == raised.tool_calls
    assert at_default.tool_calls[0]["arguments"].startswith('{"inner":[{"inner"')
    assert _at_recursion_limit(1000, lambda: engine.replay(trace).identical)


def test_a_boolean_output_index_is_no_index() -> None:
    """`output_index: true` was read as index 1 (a bool is an int in Python): the call's later
    frames opened a second call, with no call_id, listed in tool_calls. It is placed by its
    `item_id`, like any other index that is not an integer."""
    body = (
        CREATED
        + frame('{"type":"response.output_item.added","output_index":0,"item":{"id":"fc_1",'
                '"type":"function_call","call_id":"call_1","name":"f","arguments":""}}')
        + frame('{"type":"response.function_call_arguments.delta","item_id":"fc_1",'
                '"output_index":true,"delta":"{}"}')
    )
    result = engine.consume(body)
    assert result.outcome == "error"
    assert [(c["call_id"], c["arguments"], c["status"]) for c in result.tool_calls] == [
        ("call_1", "{}", "incomplete")
    ]
