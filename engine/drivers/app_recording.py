"""One codex app-server turn in progress: the session machine over the shared recording.

The live driver (`engine.drivers.codex`), the replayer (`engine.drivers.replay`) and the fuzzing
strategies feed a turn the same way:

    recording = AppTurnRecording(session, callbacks, act=...)
    recording.feed(TurnRequest("hi"), t)       # logged, fed to the session, decisions logged,
    recording.feed(ServerLine(line), t)        # then acted on
    ...                                        # until recording.finished
    result = recording.finish(trace_path, secrets)

Everything but the machine it feeds and the result it builds is `Recording`'s: the event log
records the input before the machine sees it, then the machine's decisions, and only then acts
on them: text, reasoning and first-delta effects go to the caller's callbacks (fenced), `send`,
`approval`, `call_tool`, `steered` and `retire` effects to `act`, the driver's hook (the replayer
passes none: a replay writes nothing and never calls the approval callback or the tool handler;
the recorded answers are inputs).
"""

from __future__ import annotations

from typing import Callable, Final

from engine.drivers.recording import Recording
from engine.log.eventlog import Callbacks
from engine.log.logs import log
from engine.log.trace import app_header
from machines.app_records import AppInput, AppTurnResult
from machines.app_session import AppSession
from machines.records import Effect

__all__ = ["DRIVER_EFFECTS", "AppTurnRecording"]

#: Effects the driver acts on (everything else is a callback or only recorded).
DRIVER_EFFECTS: Final = frozenset({"send", "approval", "call_tool", "steered", "retire"})


class AppTurnRecording(Recording[AppTurnResult]):
    """A turn's event log over a session machine, and its trace when one is asked for.

    The header records the session as it is when the recording starts (`AppSession.snapshot`),
    so the turn replays on its own."""

    def __init__(
        self,
        session: AppSession,
        callbacks: Callbacks | None,
        *,
        act: Callable[[Effect], None] | None = None,
        observed: bool = True,
    ) -> None:
        super().__init__(
            app_header(session.config, session.snapshot()), callbacks,
            act=act, driver_effects=DRIVER_EFFECTS, observed=observed,
        )
        self.session = session
        #: the number of the turn this recording is for (inputs are recorded under it)
        self.number = session.turn_number + 1

    @property
    def finished(self) -> bool:
        """True once the turn asked for has ended (feed it nothing more)."""
        turn = self.session.turn
        return turn is not None and turn.number == self.number and turn.is_final

    def feed(self, item: AppInput, t: float | None) -> None:
        """Record one input, feed it to the session, record and act on the decisions."""
        self.log.input(self.number, item, t)
        self.log.decide(self.session.receive(item))

    def result(self) -> AppTurnResult:
        return self.session.turn_result(self.log.transitions)

    def _log_finished(self, result: AppTurnResult) -> None:
        turn = self.session.turn
        log.info("app-server turn finished", outcome=result.outcome, retired=result.retired,
                 reason=turn.ending.reason if turn is not None and turn.ending is not None
                 else None,
                 tool_iterations=result.tool_iterations, model_requests=result.model_requests)
