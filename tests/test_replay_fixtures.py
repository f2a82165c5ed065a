"""Every trace in replay_fixtures/ replays identically through today's machines."""

from __future__ import annotations

from pathlib import Path

import pytest

import engine
from engine.simulator.shapes import SHAPES
from engine.log.trace import read_trace

FIXTURES = Path(__file__).resolve().parent.parent / "replay_fixtures"
TRACES = sorted(FIXTURES.glob("*.jsonl"))


def test_the_folder_holds_traces() -> None:
    assert len(TRACES) >= len(SHAPES)


@pytest.mark.parametrize("path", TRACES, ids=[p.stem for p in TRACES])
def test_fixture_replays_identically(path: Path) -> None:
    report = engine.replay(path)
    assert report.divergence is None, report.divergence.describe()
    assert report.records == len(read_trace(path).records) > 0


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_real_world_shape_has_a_fixture(shape: str) -> None:
    trace = read_trace(FIXTURES / f"{shape}.jsonl")
    result = trace.records[-1]
    assert result["kind"] == "result"
    assert result["outcome"] in {"completed", "incomplete", "failed", "error", "interrupted"}
