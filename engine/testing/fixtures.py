"""Recording the built-in shapes as replay fixtures.

`python -m engine.testing.fixtures [DIR]` runs every shape of `engine.simulator.shapes.SHAPES` as a real turn (the
openai client against the loopback simulator) and writes its trace to `DIR/<shape>.jsonl`
(default `replay_fixtures/`). The test suite replays every file in that folder, so a change to the
machines that alters any recorded decision fails until the fixture is re-recorded on purpose.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import attrs
import openai

from engine.drivers.consume import consume
from engine.log.eventlog import Callbacks
from engine.simulator.shapes import BACKGROUND_SHAPES, SHAPES
from engine.simulator.server import ResponsesSimulator
from engine.simulator.replies import Script
from engine.simulator.background import background_response_id
from machines.records import Chunk, TurnPolicy, TurnResult
from engine.drivers.sync import run_turn

__all__ = ["FIXTURE_POLICIES", "record_shape"]

#: Shapes recorded with a policy other than the default.
FIXTURE_POLICIES: dict[str, TurnPolicy] = {
    "stall_then_retry": TurnPolicy(idle_timeout_s=0.3),
    "http_503_then_ok": TurnPolicy(max_http_retries=2),
}

REQUEST = {"model": "gpt-5", "input": "What is the capital of France?"}
#: The request of the background shapes (`BACKGROUND_SHAPES`) and the background fixtures.
BACKGROUND_REQUEST = {**REQUEST, "background": True}


def _client(sim: ResponsesSimulator) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.base_url, api_key="fixture-key", max_retries=0)


def record_shape(name: str, path: str | os.PathLike[str]) -> TurnResult:
    """Run one built-in shape through `run_turn` over loopback HTTP, recording it at `path`."""
    with ResponsesSimulator(SHAPES[name]) as sim:
        request = BACKGROUND_REQUEST if name in BACKGROUND_SHAPES else REQUEST
        return run_turn(_client(sim), request, policy=FIXTURE_POLICIES.get(name), trace=path)


def record_refused_resume(path: str | os.PathLike[str]) -> TurnResult:
    """A background response cancelled elsewhere while its first stream is read: the resume is
    refused (HTTP 400), so the turn asks again (the fallback request, which is answered)."""
    resumable = SHAPES["background_drop_then_resume"].replies[0]
    answer = SHAPES["happy_text"].replies[0]
    script = Script(replies=(resumable, answer), name="background_resume_refused",
                    description="a background response cancelled elsewhere, then an answer")
    with ResponsesSimulator(script) as sim:
        client = _client(sim)
        response_id = background_response_id(1)

        def cancel_elsewhere(delta: str) -> None:
            if not sim.background_responses[response_id].cancelled:
                client.responses.cancel(response_id)

        return run_turn(client, BACKGROUND_REQUEST, trace=path,
                        callbacks=Callbacks(on_text_delta=cancel_elsewhere))


def _interrupted(
    script: Script, request: dict[str, Any], path: str | os.PathLike[str], after_s: float
) -> TurnResult:
    """`script` served to a turn that the caller interrupts after `after_s` seconds."""
    stop = threading.Event()
    timer = threading.Timer(after_s, stop.set)
    with ResponsesSimulator(script) as sim:
        timer.start()
        try:
            return run_turn(_client(sim), request, trace=path, interrupt=stop)
        finally:
            timer.cancel()


def record_interrupted_background(path: str | os.PathLike[str], after_s: float = 0.2) -> TurnResult:
    """A caller interrupting a stalled background response: the turn cancels it."""
    stalling = SHAPES["stall_then_retry"].replies[0]
    stalled = Script(replies=(attrs.evolve(stalling, background_drop_after_events=100),),
                     name="background_stall", description="a stalled background response")
    return _interrupted(stalled, BACKGROUND_REQUEST, path, after_s)


def record_interrupted_stall(path: str | os.PathLike[str], after_s: float = 0.2) -> TurnResult:
    """A caller interrupting a stalled stream mid-answer (the stall_then_retry shape)."""
    return _interrupted(SHAPES["stall_then_retry"], REQUEST, path, after_s)


def record_consumed(name: str, path: str | os.PathLike[str]) -> TurnResult:
    """The first reply of a shape as raw bytes through `consume` (no network)."""
    reply = SHAPES[name].replies[0]
    return consume([step.data for step in reply.steps if isinstance(step, Chunk)], trace=path)


def main(argv: list[str]) -> int:
    """`python -m engine.testing.fixtures [DIR]`: re-record every fixture into DIR (default
    `replay_fixtures/`) and print each one's outcome; returns the exit status, 0."""
    directory = argv[0] if argv else "replay_fixtures"
    os.makedirs(directory, exist_ok=True)
    results = {name: record_shape(name, os.path.join(directory, f"{name}.jsonl")) for name in SHAPES}
    results["interrupted_during_stall"] = record_interrupted_stall(
        os.path.join(directory, "interrupted_during_stall.jsonl")
    )
    results["background_resume_refused"] = record_refused_resume(
        os.path.join(directory, "background_resume_refused.jsonl")
    )
    results["background_interrupted_cancelled"] = record_interrupted_background(
        os.path.join(directory, "background_interrupted_cancelled.jsonl")
    )
    for name in ("happy_text", "drop_then_retry"):
        results[f"consume_{name}"] = record_consumed(
            name, os.path.join(directory, f"consume_{name}.jsonl")
        )
    for name, result in results.items():
        print(f"{name:34} {result.outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
