"""The turn loop every network driver shares (`engine.drivers.turn_loop`), carried out by a
scripted driver: what it asks for, in order, and what an exception from a step does."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from engine.drivers.recording import AttemptFeed, TurnRecording
from engine.drivers.turn_loop import FINISH_GRACE_S, Reply, drive, turn_steps
from engine.simulator.shapes import SHAPES
from machines.records import Chunk, EndOfStream, Fault, TransportFault, TurnPolicy

CHUNKS = [step.data for step in SHAPES["happy_text"].replies[0].steps if isinstance(step, Chunk)]


class ScriptedDriver:
    """Hands the attempts' observations over from a list per attempt and notes every step."""

    def __init__(self, *attempts: list[Reply], fail_on_wait: BaseException | None = None) -> None:
        self.attempts = [list(observations) for observations in attempts]
        self.fail_on_wait = fail_on_wait
        self.steps: list[str] = []

    def wait(self, seconds: float) -> Reply:
        if self.fail_on_wait is not None:
            raise self.fail_on_wait
        pending = self.attempts[0]
        return pending.pop(0) if pending else None

    def pause(self, seconds: float) -> None:
        self.steps.append("pause")

    def open(self, feed: AttemptFeed) -> None:
        self.steps.append(f"open {feed.kind}")

    def close(self, grace_s: float) -> None:
        self.steps.append(f"close {grace_s}")
        self.attempts.pop(0)

    def cancel(self, response_id: str) -> None:
        self.steps.append(f"cancel {response_id}")


def _turn(policy: TurnPolicy, trace: Path | None = None) -> tuple[TurnRecording, object]:
    recording = TurnRecording(policy, None, entry="run_turn")
    steps = turn_steps(
        recording, lambda: False, lambda: 0.0, idle_timeout_s=None, trace=trace, secrets=[]
    )
    return recording, steps


def test_each_attempt_is_opened_run_and_closed_and_the_result_returned() -> None:
    driver = ScriptedDriver(
        [Chunk(CHUNKS[0]), TransportFault(Fault.DROP, "ReadError")],
        [Chunk(chunk) for chunk in CHUNKS] + [EndOfStream()],
    )
    _, steps = _turn(TurnPolicy(max_stream_retries=1))
    result = drive(steps, driver)  # type: ignore[arg-type]
    assert result.outcome == "completed"
    # stopped by what the server sent: the reader gets the grace to read the body to its end
    assert driver.steps == [
        "open stream", f"close {FINISH_GRACE_S}", "open stream", f"close {FINISH_GRACE_S}"
    ]


def test_an_exception_from_a_step_closes_the_reader_and_abandons_the_trace(tmp_path: Path) -> None:
    driver = ScriptedDriver([], fail_on_wait=KeyboardInterrupt())
    _, steps = _turn(TurnPolicy(), tmp_path / "t.jsonl")
    with pytest.raises(KeyboardInterrupt):
        drive(steps, driver)  # type: ignore[arg-type]
    assert driver.steps == ["open stream", "close 0.0"]  # aborted at once
    last = orjson.loads((tmp_path / "t.jsonl").read_bytes().splitlines()[-1])
    assert last["kind"] == "abandoned" and last["exception"] == "KeyboardInterrupt"
