"""Property tests of the app-server machines: any generated turn keeps every invariant.

The strategies (engine.fuzz.app_strategies) draw turns with restarted deltas, approvals at
any point, repeated and foreign lines, garbage, interrupts and deaths anywhere; the invariants
(engine.fuzz.app_invariants) check that nothing raises, text is never doubled, every request
is answered once, the outcome follows the ending and the turn replays identically (which also
shows that feeding is deterministic). Example counts come from the Hypothesis profile
(tests/conftest.py).
"""

from __future__ import annotations

from hypothesis import given

from engine.fuzz.app_invariants import check_app_script
from engine.fuzz.app_strategies import AppScript, app_sessions


@given(app_sessions())
def test_every_generated_turn_keeps_the_invariants(script: AppScript) -> None:
    check_app_script(script)

