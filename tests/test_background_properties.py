"""Property tests of resuming background responses: generated background sessions (breaks at any
point, resumes that overlap, repeat an event, break again or are refused, any policy) must keep
every rule of `engine.fuzz.background`, and their traces must replay identically."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings

from engine.fuzz.background import (
    BackgroundSession,
    ResumePlan,
    background_sessions,
    check_background,
)
from engine.fuzz.background import background_responses
from machines.records import TurnPolicy


@given(background_sessions())
def test_every_resume_rule_holds(session: BackgroundSession) -> None:
    check_background(session)


@settings(max_examples=max(10, settings().max_examples // 5))
@given(background_sessions())
def test_background_traces_replay_identically(session: BackgroundSession) -> None:
    with tempfile.TemporaryDirectory() as folder:
        check_background(session, Path(folder) / "trace.jsonl")


@given(background_responses())
def test_a_response_cut_anywhere_and_resumed_once_completes_with_its_whole_text(
    events: tuple[dict[str, object], ...]
) -> None:
    """With one stream retry, a cut after any number of events is healed by one resume (or, cut
    before the response id, by asking again) and the user sees the whole text once."""
    for cut in range(len(events)):
        session = BackgroundSession(events, cut, "drop", (ResumePlan(overlap=2, duplicate=1),),
                                    TurnPolicy(max_stream_retries=1, fallback=False))
        result = check_background(session)
        assert result.outcome == "completed"
        kinds = [a.kind for a in result.attempts]
        assert kinds in (["stream", "stream"], ["stream", "resume"]) or cut == len(events), kinds
