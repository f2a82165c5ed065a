"""Recording the replay fixtures, and recording them again after a rule changed on purpose.

The test suite replays every trace in `replay_fixtures/`, so a change to the machines that alters
any recorded decision fails until the fixtures are re-recorded on purpose:

    streamfsm fixtures --rerecord [DIR]

does it in one step (`rerecord`), for every trace today's machines no longer replay identically
(the others are kept as they are). The fixtures streamfsm makes itself (`BUILT_IN`: every
shape of `engine.simulator.shapes.SHAPES` as a real turn, the openai client against the loopback
simulator, and a few turns scripted around them) are recorded again from their source; every other
trace in the folder (a fuzzing finding promoted to a fixture, a turn recorded from the real codex
app-server) is derived again from its own recorded inputs through today's machines (`rederive`):
the inputs stay, the decisions are today's. A trace whose inputs no longer suffice (today's
machines ask for an attempt the recording never made) is left as it is and reported: record it
again where it came from. `python -m engine.testing.fixtures [DIR]` records the built-in ones only.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from typing import Any, Callable

import attrs
import openai

from engine.drivers.consume import consume
from engine.drivers.replay import REPLAYERS, NeedInput, replay
from engine.log.eventlog import InputRecord
from engine.log.trace import TraceError, TraceReader, dumps
from engine.log.eventlog import Callbacks
from engine.simulator.shapes import BACKGROUND_SHAPES, SHAPES
from engine.simulator.server import ResponsesSimulator
from engine.simulator.replies import Script
from engine.simulator.background import background_response_id
from machines.records import Chunk, TurnPolicy, TurnResult
from engine.drivers.sync import run_turn

__all__ = [
    "BUILT_IN",
    "FIXTURE_POLICIES",
    "Rerecorded",
    "record_built_ins",
    "record_shape",
    "rederive",
    "rerecord",
]

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


#: How each fixture streamfsm makes itself is recorded: its name, and a function of its path.
BUILT_IN: dict[str, Callable[[str], TurnResult]] = {
    **{name: functools.partial(record_shape, name) for name in SHAPES},
    "interrupted_during_stall": record_interrupted_stall,
    "background_resume_refused": record_refused_resume,
    "background_interrupted_cancelled": record_interrupted_background,
    **{f"consume_{name}": functools.partial(record_consumed, name)
       for name in ("happy_text", "drop_then_retry")},
}


def record_built_ins(directory: str | os.PathLike[str]) -> dict[str, TurnResult]:
    """Record every fixture streamfsm makes itself into `directory`; the results by name."""
    os.makedirs(directory, exist_ok=True)
    return {
        name: record(os.path.join(directory, f"{name}.jsonl")) for name, record in BUILT_IN.items()
    }


def rederive(path: str | os.PathLike[str]) -> str | None:
    """Feed the trace's recorded inputs to today's machines and write what they decide back to
    `path` (same header, same inputs, today's transitions, effects and result). Returns the
    turn's new outcome, or None when today's machines ask for an input the trace does not hold
    (the file is then left as it was)."""
    with TraceReader(path) as reader:
        header = reader.header
        session = REPLAYERS[reader.entry](header)
        inputs = ((record, item) for _, record, item in reader if item is not None)
        made: list[dict[str, Any] | bytes] = []
        try:
            step = next(session)
            while True:
                if isinstance(step, NeedInput):
                    found = next(inputs, None)
                    if found is None or found[0].get("attempt") != step.attempt:
                        return None
                    record, item = found
                    step = session.send(InputRecord(step.attempt, record.get("t"), item))
                else:
                    made += step
                    step = next(session)
        except StopIteration:
            pass
        finally:
            session.close()
    last = made[-1] if made else None
    if not isinstance(last, dict) or last.get("kind") != "result":
        return None
    tmp = os.fspath(path) + ".partial"
    with open(tmp, "wb") as out:
        lines = [record if isinstance(record, bytes) else dumps(record) for record in made]
        out.write(b"\n".join([dumps(header), *lines]) + b"\n")
    os.replace(tmp, path)
    outcome = last.get("outcome")
    return outcome if isinstance(outcome, str) else None


@attrs.frozen(slots=True)
class Rerecorded:
    """One fixture after `rerecord`: its path and what was done ("kept": it replays identically
    already; "recorded": made again from its source; "derived": from its own inputs; "left": its
    inputs no longer suffice), and the turn's outcome when it was made again."""

    path: str
    how: str
    outcome: str | None = None


def rerecord(directory: str | os.PathLike[str] = "replay_fixtures") -> list[Rerecorded]:
    """Re-record every fixture in `directory` that today's machines no longer replay identically
    (module docstring), in file-name order; the others are kept as they are. A built-in fixture
    missing from the folder is recorded."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    done: list[Rerecorded] = []
    paths = {os.path.join(directory, f"{name}.jsonl"): name for name in BUILT_IN}
    for root, _, names in sorted(os.walk(directory)):
        paths.update({os.path.join(root, name): "" for name in names
                      if name.endswith(".jsonl") and os.path.join(root, name) not in paths})
    for path, name in sorted(paths.items()):
        if os.path.exists(path) and _replays(path):
            done.append(Rerecorded(path, "kept"))
        elif name:
            done.append(Rerecorded(path, "recorded", BUILT_IN[name](path).outcome))
        else:
            outcome = rederive(path)
            done.append(Rerecorded(path, "derived" if outcome is not None else "left", outcome))
    return done


def _replays(path: str) -> bool:
    try:
        return replay(path).identical
    except TraceError:
        return False


def main(argv: list[str]) -> int:
    """`python -m engine.testing.fixtures [DIR]`: record the built-in fixtures into DIR (default
    `replay_fixtures/`) and print each one's outcome; returns the exit status, 0."""
    directory = argv[0] if argv else "replay_fixtures"
    for name, result in record_built_ins(directory).items():
        print(f"{name:34} {result.outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
