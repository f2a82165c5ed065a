"""Every example scenario in docs/scenarios/ through `engine.run_turn` and `engine.arun_turn`,
with the real openai client (sync and async) against the simulator, and what each one sent as
the request log records it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import attrs
import openai
import pytest

import engine
from engine.simulator.scenarios import load_scenario
from engine.simulator.server import ResponsesSimulator

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "scenarios"
REQUEST: dict[str, Any] = {"model": "gpt-5", "input": "What is the capital of France?"}
PARIS = "The capital of France is Paris."


@attrs.frozen
class Expected:
    outcome: str
    requests: int
    text: str = ""
    error_code: str | None = None
    policy: engine.TurnPolicy | None = None
    max_retries: int = 0


EXPECTED: dict[str, Expected] = {
    "text.toml": Expected("completed", 1, PARIS),
    "rate_limit_then_text.toml": Expected("error", 1, error_code="rate_limit_exceeded"),
    "drop_then_text.toml": Expected("completed", 2, PARIS),
    "stall_then_text.toml": Expected(
        "completed", 2, PARIS, policy=engine.TurnPolicy(idle_timeout_s=0.5)
    ),
    "error_frame_then_text.json": Expected("error", 1, error_code="server_error"),
    "incomplete.toml": Expected("incomplete", 1, "The capital of France is Paris. It has"),
}


def _log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _run(name: str, tmp_path: Path, mode: str, expected: Expected, request: dict[str, Any]) -> tuple[engine.TurnResult, list[dict[str, Any]]]:
    log = tmp_path / f"{mode}.jsonl"
    with ResponsesSimulator(load_scenario(EXAMPLES / name), log=log) as sim:
        if mode == "sync":
            client = openai.OpenAI(base_url=sim.base_url, api_key="x", max_retries=expected.max_retries)
            with client:
                result = engine.run_turn(client, dict(request), policy=expected.policy)
        else:

            async def run() -> engine.TurnResult:
                client = openai.AsyncOpenAI(
                    base_url=sim.base_url, api_key="x", max_retries=expected.max_retries
                )
                async with client:
                    return await engine.arun_turn(client, dict(request), policy=expected.policy)

            result = asyncio.run(run())
        assert sim.server_errors == []
    return result, _log(log)


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_through_the_engine(name: str, mode: str, tmp_path: Path) -> None:
    expected = EXPECTED[name]
    result, log = _run(name, tmp_path, mode, expected, REQUEST)
    assert result.outcome == expected.outcome
    assert len(log) == expected.requests
    assert result.output_text == expected.text
    if expected.error_code is None:
        assert result.error is None
    else:
        assert result.error is not None and result.error["code"] == expected.error_code
    for line in log:
        assert line["method"] == "POST" and line["path"] == "/v1/responses"
        assert line["body"]["input"] == REQUEST["input"] and line["body"]["stream"] is True
        assert line["headers"]["authorization"] == "[redacted]"
    assert [line["reply"] for line in log] == list(range(expected.requests))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_rate_limit_with_the_clients_own_retries_waits_for_retry_after(
    mode: str, tmp_path: Path
) -> None:
    expected = Expected("completed", 2, max_retries=2)
    result, log = _run("rate_limit_then_text.toml", tmp_path, mode, expected, REQUEST)
    assert result.outcome == "completed"
    assert result.output_text == "Rate limit passed: the capital of France is Paris."
    assert [(line["status"], line["reply"]) for line in log] == [(429, 0), (200, 1)]
    assert log[1]["t"] - log[0]["t"] >= 1.0


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_tool_call_then_the_answer_once_the_output_comes_back(mode: str, tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    scenario = load_scenario(EXAMPLES / "tool_call_then_answer.toml")
    with ResponsesSimulator(scenario, log=log) as sim:

        def turns(first: engine.TurnResult) -> dict[str, Any]:
            (call,) = first.tool_calls
            return {
                "model": "gpt-5",
                "input": [
                    {"role": "user", "content": "Run echo."},
                    {"type": "function_call", "call_id": call["call_id"], "name": call["name"],
                     "arguments": call["arguments"]},
                    {"type": "function_call_output", "call_id": call["call_id"],
                     "output": "streamfsm-tool-ok\n"},
                ],
            }

        if mode == "sync":
            with openai.OpenAI(base_url=sim.base_url, api_key="x", max_retries=0) as client:
                first = engine.run_turn(client, {"model": "gpt-5", "input": "Run echo."})
                second = engine.run_turn(client, turns(first))
        else:

            async def run() -> tuple[engine.TurnResult, engine.TurnResult]:
                async with openai.AsyncOpenAI(
                    base_url=sim.base_url, api_key="x", max_retries=0
                ) as client:
                    first = await engine.arun_turn(client, {"model": "gpt-5", "input": "Run echo."})
                    return first, await engine.arun_turn(client, turns(first))

            first, second = asyncio.run(run())
    assert first.outcome == "completed" and first.output_text == ""
    assert [(c["name"], c["arguments"]) for c in first.tool_calls] == [
        ("exec_command", '{"cmd":"echo streamfsm-tool-ok"}')
    ]
    assert second.outcome == "completed" and second.tool_calls == []
    assert second.output_text == "The command printed streamfsm-tool-ok."
    lines = _log(log)
    assert [line["reply"] for line in lines] == [1, 0]
    assert lines[1]["body"]["input"][-1]["output"] == "streamfsm-tool-ok\n"
