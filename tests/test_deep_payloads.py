"""Server values nested deeper than orjson writes (255+ levels) never raise where streamfsm
writes them back as JSON or shows them as text: the seed's functions re-framing SDK events, the
app-server's projections and error checks, app-server trace records."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from engine.compat import stream_call
from engine.log.trace import TraceWriter, app_header, equal, read_trace
from engine.simulator.shapes import assemble, completed, created, output_items, text_message
from machines.app_protocol import is_auth_failure, project_item
from machines.app_records import SessionConfig
from machines.app_session import AppSession
from machines.records import Effect

from test_compat import KWARGS, Agent, FakeStream, fake_client, typed

DEPTHS = [300, 900]


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"x": value}
    return value


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("as_sdk_objects", [False, True], ids=["dicts", "typed"])
def test_the_seeds_functions_take_sdk_events_nested_deep(depth: int, as_sdk_objects: bool) -> None:
    message = text_message("Hello there", deltas=2)
    events = [e for e in assemble(created(), message, completed(output_items(message)))
              if isinstance(e, dict)]
    events[-1]["response"]["metadata"] = {"deep": nested(depth)}
    stream = FakeStream(typed(events) if as_sdk_objects else events)
    agent = Agent()
    call = stream_call(agent, dict(KWARGS), fake_client([stream]))
    assert call.raised is None
    assert call.result.outcome == "completed"
    assert call.result.output_text == "Hello there"
    assert "".join(agent.deltas) == "Hello there"


@pytest.mark.parametrize("depth", DEPTHS)
def test_app_server_items_and_errors_nested_deep_never_raise(depth: int, tmp_path: Path) -> None:
    deep = nested(depth)
    config = SessionConfig(cwd="/work")
    header = app_header(config, AppSession(config).snapshot())
    trace = tmp_path / "deep.jsonl"
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)  # what a process has, whatever the test runner raised it to
    try:
        call = project_item({"type": "mcpToolCall", "id": "m1", "server": deep, "tool": "t",
                             "arguments": deep, "status": "failed",
                             "error": {"message": deep}})
        assert not is_auth_failure({"code": deep, "message": deep, "details": deep})
        assert is_auth_failure({"message": {"words": ["invalid_grant"]}})
        written = TraceWriter(trace).write(
            header, [Effect("send", 1, {"params": deep})], {"outcome": "error", "error": deep}
        )
        records = read_trace(trace).records
    finally:
        sys.setrecursionlimit(before)
    assert call.ran and call.messages[0]["tool_calls"][0]["function"]["name"].startswith("mcp.")
    assert written and records[0]["seq"] == 1
    assert equal(records[0]["data"], {"params": deep}) and equal(records[1]["error"], deep)
