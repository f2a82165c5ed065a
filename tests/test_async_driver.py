"""`arun_turn` with the real `openai.AsyncOpenAI` client gives what `run_turn` gives."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import openai
import pytest

import engine
from engine.simulator.shapes import SHAPES
from engine.simulator.server import ResponsesSimulator
from support import within

REQUEST = {"model": "gpt-5", "input": "hi"}
POLICY = engine.TurnPolicy(idle_timeout_s=0.3)


def _summary(result: engine.TurnResult) -> tuple:
    return (
        result.outcome,
        result.output_text,
        result.tool_calls,
        result.error,
        [(a.kind, a.final_state, a.reason) for a in result.attempts],
        [(t.machine, t.attempt, t.source, t.dest, t.trigger) for t in result.transitions],
    )


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_async_turn_matches_sync_turn(name: str, tmp_path: Path) -> None:
    with ResponsesSimulator(SHAPES[name]) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="k", max_retries=0)
        sync_result = engine.run_turn(client, REQUEST, policy=POLICY)

    async def run() -> tuple[engine.TurnResult, list[str], int]:
        delivered: list[str] = []
        with ResponsesSimulator(SHAPES[name]) as sim:
            client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="k", max_retries=0)
            result = await engine.arun_turn(
                client, REQUEST, policy=POLICY, trace=tmp_path / "a.jsonl",
                callbacks=engine.Callbacks(on_text_delta=delivered.append),
            )
            return result, delivered, len(sim.requests)

    async_result, delivered, requests = asyncio.run(run())
    assert _summary(async_result) == _summary(sync_result)
    assert requests == len(async_result.attempts)
    assert "".join(delivered) in (async_result.output_text, "") or async_result.outcome != "completed"
    report = engine.replay(tmp_path / "a.jsonl")
    assert report.identical, report.divergence


def test_async_interrupt_is_prompt_during_a_stall() -> None:
    async def run() -> tuple[engine.TurnResult, float]:
        stop = threading.Event()
        with ResponsesSimulator(SHAPES["stall_then_retry"]) as sim:
            client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="k", max_retries=0)
            asyncio.get_running_loop().call_later(0.2, stop.set)
            began = time.monotonic()
            result = await engine.arun_turn(client, REQUEST, interrupt=stop)
            return result, time.monotonic() - began

    result, elapsed = asyncio.run(run())
    assert result.outcome == "interrupted"
    assert elapsed < within(1.0, before=2.0)  # the stall lasts 2 s
    assert result.output_text  # the partial answer is kept
    assert [(a.final_state, a.reason) for a in result.attempts] == [("retire", "interrupted")]


def test_arun_turn_refuses_a_sync_client() -> None:
    client = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="k")
    with pytest.raises(TypeError, match="AsyncOpenAI"):
        asyncio.run(engine.arun_turn(client, REQUEST))
