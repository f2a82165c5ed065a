"""One turn in progress: its machines, its event log and its trace, shared by every driver.

The sync driver, the async driver, `consume` and the replayer differ only in where inputs come
from (a socket, a list of chunks, a trace file). All of them run this loop:

    recording = TurnRecording(policy, callbacks, entry="run_turn", request=request)
    for feed in recording.attempts():          # the turn machine decides each attempt
        ...observe the world...
        feed.chunk(data, t)                     # logged, decoded, fed to the attempt
        feed.end(t) / feed.fail(fault, t)       # until feed.final
    result = recording.finish(trace_path, secrets)

`AttemptFeed` logs each observation as an input record *before* the machine sees it, so the log
holds exactly what a replay needs, in order.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import attrs

from engine.log.eventlog import Callbacks, EventLog, RecordedInput
from machines.records import Chunk
from engine.log.logs import log
from engine.log.redaction import field_secrets, scrub
from engine.drivers.sse import SseDecoder
from engine.log.trace import TraceWriter, header_for
from machines.records import EndOfStream, TurnPolicy, TurnResult
from machines.stream_attempt import FINAL, StreamAttempt
from machines.turn import TurnMachine

__all__ = ["AttemptFeed", "TurnRecording"]


class AttemptFeed:
    """Observations of one attempt → input records → decoded events → the attempt's machine."""

    __slots__ = ("attempt", "number", "kind", "_log", "_decoder")

    def __init__(self, attempt: StreamAttempt, event_log: EventLog) -> None:
        self.attempt = attempt
        self.number = attempt.number
        self.kind = attempt.kind
        self._log = event_log
        self._decoder = SseDecoder()

    @property
    def final(self) -> bool:
        return self.attempt.state in FINAL

    def chunk(self, data: bytes, t: float | None = None) -> bool:
        """One network read. Returns True once the attempt has reached a final state."""
        self._log.input(self.number, Chunk(data), t)
        attempt = self.attempt
        receive = attempt.receive_event
        for event in self._decoder.feed(data):
            receive(event)
            if attempt.state in FINAL:
                return True
        return False

    def end(self, t: float | None = None) -> None:
        """The body ended cleanly."""
        self._log.input(self.number, EndOfStream(), t)
        attempt = self.attempt
        for event in self._decoder.close():
            attempt.receive_event(event)
        attempt.receive(EndOfStream())

    def fail(self, item: RecordedInput, t: float | None = None) -> None:
        """Anything else the driver observed: an HTTP error, a fault, an idle timeout, an interrupt."""
        self._log.input(self.number, item, t)
        self.attempt.receive(item)


class TurnRecording:
    """A turn's machines and event log, and its trace when one is asked for."""

    def __init__(
        self,
        policy: TurnPolicy,
        callbacks: Callbacks | None,
        *,
        entry: str,
        request: dict[str, Any] | None = None,
    ) -> None:
        self.policy = policy
        self.log = EventLog(callbacks)
        self.turn = TurnMachine(policy, self.log)
        self.header = header_for(entry, policy, request)
        #: values of the request's credential-named fields, scrubbed wherever they are echoed
        self.request_secrets = field_secrets(request)

    def attempts(self) -> Iterator[AttemptFeed]:
        """Each attempt the turn machine opens; the caller feeds it until it is final."""
        while (attempt := self.turn.next_attempt()) is not None:
            feed = AttemptFeed(attempt, self.log)
            yield feed
            if not feed.final:
                raise RuntimeError(f"attempt {attempt.number} was left before it ended")
            log.debug(
                "attempt ended",
                attempt=attempt.number,
                kind=attempt.kind,
                final_state=attempt.state,
                reason=attempt.reason,
                undecodable=attempt.undecodable,
                ignored=attempt.ignored,
            )

    def finish(
        self,
        trace: str | os.PathLike[str] | None = None,
        secrets: list[str] | tuple[str, ...] = (),
    ) -> TurnResult:
        result = self.turn.result()
        secrets = sorted({*secrets, *self.request_secrets}, key=len, reverse=True)
        if result.error is not None:
            result = attrs.evolve(result, error=scrub(result.error, secrets))
        if trace is not None:
            TraceWriter(trace, secrets).write(self.header, self.log.records, result)
        log.info(
            "turn finished",
            outcome=result.outcome,
            attempts=[f"{a.kind}:{a.final_state}:{a.reason}" for a in result.attempts],
        )
        return result

    def abandon(self, trace: str | os.PathLike[str] | None, secrets: list[str] | tuple[str, ...] = ()) -> None:
        """Write what was recorded so far (no result) after an unexpected error."""
        if trace is not None:
            secrets = sorted({*secrets, *self.request_secrets}, key=len, reverse=True)
            TraceWriter(trace, secrets).write(self.header, self.log.records, None)
