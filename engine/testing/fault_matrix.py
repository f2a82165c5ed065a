"""The fault matrix: a reply cut at byte offsets, FIN or RST, then a good retry, over real HTTP.

For a built-in shape's first reply, each cell of the matrix serves that reply cut after `offset`
bytes of its event-stream body (the connection closed with a FIN or an RST), and then the
shape's good answer on the retry, to `engine.run_turn` with the real openai client over
loopback. Each turn is checked against the contract's promises:

- it returns (never raises) with outcome "completed" and the full answer (the retry heals it),
  or, when the cut falls after the terminal event, completes on the first attempt;
- the text delivered to `on_text_delta` is the answer exactly once: nothing repeated, nothing
  skipped, across the cut and the retry;
- `output_text` is never shorter than what was delivered;
- (optionally) the trace replays identically.

`sweep()` runs any set of offsets and returns the counts; the test suite runs a bounded sample
(every frame boundary and its neighbours, plus a stride), `bench/bench_faults.py` every offset.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from typing import Literal

import attrs
import openai

from engine.drivers.sync import run_turn
from engine.drivers.replay import replay
from engine.log.eventlog import Callbacks
from engine.simulator.replies import frame_ends
from engine.simulator.scenarios import reshape
from engine.simulator.shapes import SHAPES
from engine.simulator.replies import Reply, Script
from engine.simulator.server import ResponsesSimulator
from machines.records import Chunk, TurnResult

__all__ = ["Cell", "MatrixReport", "body_of", "sample_offsets", "sweep"]

REQUEST = {"model": "gpt-5", "input": "What is the capital of France?"}


def body_of(reply: Reply) -> bytes:
    """The event-stream body a streamed reply sends, joined."""
    return b"".join(step.data for step in reply.steps if isinstance(step, Chunk))


def sample_offsets(body: bytes, stride: int = 97) -> list[int]:
    """A bounded sample of cut offsets: every frame boundary and the bytes either side of it,
    the first and last bytes, and every `stride`-th byte."""
    points = {0, 1, len(body) - 1}
    for end in frame_ends(body):
        points.update((end - 1, end, end + 1))
    points.update(range(0, len(body), stride))
    return sorted(p for p in points if 0 <= p < len(body))


@attrs.frozen(slots=True)
class Cell:
    """One turn of the matrix that broke a promise: where, how, and what went wrong."""

    offset: int
    drop: Literal["fin", "rst"]
    problem: str


@attrs.frozen(slots=True)
class MatrixReport:
    """What a sweep found: turns run, how many healed by a retry, and every broken promise."""

    shape: str
    turns: int
    retried: int
    failures: tuple[Cell, ...]


def _answer_of(shape: str) -> str:
    good = SHAPES[shape].replies[-1]
    with ResponsesSimulator(Script([good])) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="sk-matrix", max_retries=0)
        return run_turn(client, REQUEST).output_text


def sweep(
    shape: str,
    offsets: Iterable[int],
    drops: Iterable[Literal["fin", "rst"]] = ("fin", "rst"),
    *,
    replay_every: int = 0,
) -> MatrixReport:
    """Cut the shape's first reply at each offset, each way, and check every turn (see the
    module docstring). `replay_every`: write and replay the trace of every Nth turn (0: none)."""
    script = SHAPES[shape]
    first, good = script.replies[0], script.replies[-1]
    answer = _answer_of(shape)
    failures: list[Cell] = []
    turns = retried = 0
    scratch = tempfile.mkdtemp(prefix="streamfsm-matrix-")
    drop_modes = tuple(drops)
    for offset in offsets:
        for drop in drop_modes:
            cut = reshape(first, drop_after_bytes=offset, drop=drop)
            heard: list[str] = []
            trace = (
                os.path.join(scratch, f"{offset}-{drop}.jsonl")
                if replay_every and turns % replay_every == 0
                else None
            )
            try:
                with ResponsesSimulator(Script([cut, good])) as sim:
                    client = openai.OpenAI(
                        base_url=sim.base_url, api_key="sk-matrix", max_retries=0
                    )
                    result = run_turn(
                        client, REQUEST, callbacks=Callbacks(on_text_delta=heard.append),
                        trace=trace,
                    )
            except Exception as error:  # a promise broken: the turn raised
                failures.append(Cell(offset, drop, f"raised {type(error).__name__}: {error}"))
                turns += 1
                continue
            turns += 1
            retried += len(result.attempts) > 1
            problem = _problem(result, "".join(heard), answer)
            if problem is None and trace is not None and not replay(trace).identical:
                problem = "the trace does not replay identically"
            if problem is not None:
                failures.append(Cell(offset, drop, problem))
    return MatrixReport(shape, turns, retried, tuple(failures))


def _problem(result: TurnResult, heard: str, answer: str) -> str | None:
    if result.outcome != "completed":
        return f"outcome {result.outcome}, attempts {[a.reason for a in result.attempts]}"
    if heard != answer:
        return f"delivered {heard!r}, the answer is {answer!r}"
    if result.output_text != answer:
        return f"output_text {result.output_text!r}, the answer is {answer!r}"
    return None
