"""Property tests of the app-server machines: any generated turn keeps every invariant.

The strategies (engine.fuzz.app_strategies) draw turns with restarted deltas, approvals and
client tool calls at any point (repeated call ids, raising handlers), usage reports, repeated and
foreign lines, `turn/completed` lines that are not the turn's end, garbage, interrupts, the turn's
limit, the session closed and deaths anywhere; the invariants (engine.fuzz.app_invariants) check
that nothing raises, text is never doubled, every request is answered once, each tool call is
asked of the handler once, usage adds up, the outcome follows the ending and the turn replays
identically (which also shows that feeding is deterministic). Example counts come from the
Hypothesis profile (tests/conftest.py).
"""

from __future__ import annotations

from typing import Callable

import pytest
from hypothesis import HealthCheck, find, given, settings

from engine.fuzz.app_invariants import check_app_script
from engine.fuzz.app_strategies import AppScript, app_sessions
from machines.app_records import Close, ServerLine, ToolAnswer, TurnTimeout


@given(app_sessions())
def test_every_generated_turn_keeps_the_invariants(script: AppScript) -> None:
    check_app_script(script)


def _repeats_a_call_id(script: AppScript) -> bool:
    calls = [call_id for _, call_id in script.tool_requests]
    return len(calls) > len(set(calls)) and any(
        isinstance(step.input, ToolAnswer) for step in script.steps)


def _ends(kind: type) -> Callable[[AppScript], bool]:
    return lambda script: isinstance(script.steps[-1].input, kind)


#: What the strategies must be able to draw (each found, then checked like any draw).
SHAPES: dict[str, Callable[[AppScript], bool]] = {
    "a repeated call id": _repeats_a_call_id,
    "a raising tool handler": lambda script: any(
        isinstance(step.input, ToolAnswer) and not step.input.success for step in script.steps),
    "a usage report in codex's shape": lambda script: any(
        isinstance(step.input, ServerLine) and '"last"' in step.input.text
        and "tokenUsage" in step.input.text for step in script.steps),
    "a turn/completed that is not the turn's": lambda script: any(
        step.ends_nothing for step in script.steps[:-1]),
    "the session closed": _ends(Close),
    "the turn's limit": lambda script: any(
        isinstance(step.input, TurnTimeout) for step in script.steps),
}


@pytest.mark.slow
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_the_strategies_draw_the_rest_of_the_protocol(shape: str) -> None:
    script = find(app_sessions(), SHAPES[shape], settings=settings(
        max_examples=5_000, database=None, suppress_health_check=list(HealthCheck)))
    check_app_script(script)
