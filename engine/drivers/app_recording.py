"""One app-server turn in progress: the session machine, the turn's event log and its trace.

The live driver (`engine.drivers.codex`), the replayer (`engine.drivers.app_replay`) and the
fuzzing strategies feed a turn the same way:

    recording = AppTurnRecording(session, callbacks, act=...)
    recording.feed(TurnRequest("hi"), t)       # logged, fed to the session, decisions logged,
    recording.feed(ServerLine(line), t)        # then acted on
    ...                                        # until recording.finished
    result = recording.finish(trace_path, secrets)

`feed` records the input *before* the machine sees it, then records the machine's decisions, and
only then acts on them: text, reasoning and first-delta effects go to the caller's callbacks
(fenced: a raising callback is logged and never breaks the turn); `send`, `approval` and
`retire` effects go to `act`, the driver's hook (the replayer passes none: a replay writes
nothing and never calls the approval callback; the recorded answers are inputs).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import attrs

from engine.log.app_trace import AppInputRecord, AppRecord, app_header, write_app_trace
from engine.log.eventlog import Callbacks
from engine.log.logs import log
from engine.log.redaction import scrub
from machines.app_records import AppInput, AppTurnResult
from machines.app_session import AppSession
from machines.records import Effect, Transition

__all__ = ["AppTurnRecording"]

#: Effects the driver acts on (everything else is a callback or only recorded).
DRIVER_EFFECTS = frozenset({"send", "approval", "retire"})


class AppTurnRecording:
    """A turn's event log over a session machine, and its trace when one is asked for.

    The header records the session as it is when the recording starts (`AppSession.snapshot`),
    so the turn replays on its own."""

    def __init__(
        self,
        session: AppSession,
        callbacks: Callbacks | None,
        *,
        act: Callable[[Effect], None] | None = None,
    ) -> None:
        self.session = session
        self.header = app_header(session.config, session.snapshot())
        self.records: list[AppRecord] = []
        self.transitions: list[Transition] = []
        self._act = act
        callbacks = callbacks or Callbacks()
        self._on_first = callbacks.on_first_delta
        self._on_text = callbacks.on_text_delta
        self._on_reasoning = callbacks.on_reasoning_delta
        #: the number of the turn this recording is for (inputs are recorded under it)
        self.number = session.turn_number + 1

    @property
    def finished(self) -> bool:
        """True once the turn asked for has ended (feed it nothing more)."""
        turn = self.session.turn
        return turn is not None and turn.number == self.number and turn.is_final

    def feed(self, item: AppInput, t: float | None) -> None:
        """Record one input, feed it to the session, record and act on the decisions."""
        self.records.append(AppInputRecord(self.number, t, item))
        decisions = self.session.receive(item)
        records = self.records
        for decision in decisions:
            if isinstance(decision, Transition):
                numbered = attrs.evolve(decision, seq=len(records) + 1)
                records.append(numbered)
                self.transitions.append(numbered)
                log.debug("transition", machine=numbered.machine, attempt=numbered.attempt,
                          source=numbered.source, dest=numbered.dest, trigger=numbered.trigger)
            else:
                records.append(decision)
        for decision in decisions:
            if isinstance(decision, Effect):
                self._effect(decision)

    def _effect(self, effect: Effect) -> None:
        kind = effect.kind
        if kind == "text_delta":
            if self._on_text is not None:
                _fenced(self._on_text, "on_text_delta", effect.data)
        elif kind == "reasoning_delta":
            if self._on_reasoning is not None:
                _fenced(self._on_reasoning, "on_reasoning_delta", effect.data)
        elif kind == "first_delta":
            if self._on_first is not None:
                _fenced(self._on_first, "on_first_delta")
        elif kind in DRIVER_EFFECTS and self._act is not None:
            self._act(effect)

    def result(self, secrets: list[str] | tuple[str, ...] = ()) -> AppTurnResult:
        """The turn's result (its error scrubbed of secrets); the turn must have ended."""
        result = self.session.turn_result(self.transitions)
        if result.error is not None:
            result = attrs.evolve(result, error=scrub(result.error, secrets))
        return result

    def finish(
        self,
        trace: str | os.PathLike[str] | None = None,
        secrets: list[str] | tuple[str, ...] = (),
    ) -> AppTurnResult:
        """The turn's result, and its trace written if asked."""
        ordered = sorted(set(secrets), key=len, reverse=True)
        result = self.result(ordered)
        if trace is not None:
            write_app_trace(trace, self.header, self.records, result, ordered)
        log.info("app-server turn finished", outcome=result.outcome, retired=result.retired,
                 reason=self.session.turn.ending.reason if self.session.turn is not None
                 and self.session.turn.ending is not None else None,
                 tool_iterations=result.tool_iterations, model_requests=result.model_requests)
        return result

    def abandon(
        self, trace: str | os.PathLike[str] | None, secrets: list[str] | tuple[str, ...] = ()
    ) -> None:
        """Write what was recorded so far (no result) after an unexpected error."""
        if trace is not None:
            ordered = sorted(set(secrets), key=len, reverse=True)
            write_app_trace(trace, self.header, self.records, None, ordered)


def _fenced(callback: Callable[..., Any], name: str, *args: Any) -> None:
    try:
        callback(*args)
    except Exception as error:
        log.warning("callback raised", callback=name, error=type(error).__name__)
