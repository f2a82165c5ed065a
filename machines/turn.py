"""The turn machine: which attempts a turn makes, and what the turn's outcome is.

Theory of operation
===================

A turn is a sequence of stream attempts (`machines.stream_attempt`), at most
`1 + policy.max_stream_retries` of them, possibly followed by one fallback attempt (the seed's
`create(stream=True)`), and then an outcome. The driver asks `next_attempt()` for the attempt to
run, feeds it until it reaches a final state, and asks again; `None` means the turn is over and
`result()` holds the `TurnResult`.

States and rules (the `TABLE` below; conditions are evaluated in row order):

    idle              nothing sent yet; `begin` opens stream attempt 1.
    stream_attempt    a stream attempt is running. When it ends:
                      - `fall_back` if it ended in `fallback` (a fault on the last stream attempt,
                        fallback allowed): one fallback attempt follows;
                      - `retry` if it was retired for a fault and stream attempts are left;
                      - otherwise `finish`.
    fallback_attempt  the fallback attempt is running; when it ends, `finish`.
    finished          final.

Outcome, from the last attempt: `terminal` after `response.completed` / `.incomplete` /
`.failed` gives that outcome; `terminal` after an `error` frame or an HTTP error status gives
"error" with the provider's words; `retire` by an interrupt gives "interrupted"; a retryable
`response.failed` (code in `policy.retry_failed_codes`) with nothing left to try gives "failed"
with the provider's words; any other fault with nothing left to try gives "error" with a
transport error. Output comes from the terminal response (backfilled when empty or null);
without one, from the latest attempt that streamed anything, so partial output survives every
failure and two attempts are never mixed.
"""

from __future__ import annotations

from typing import Any

from transitions import Machine

from machines.output import join_output_text, tool_calls_of
from machines.records import Attempt, EffectKind, Transition, TurnPolicy, TurnResult
from machines.stream_attempt import (
    FALLBACK,
    RETIRE,
    TERMINAL,
    AttemptSink,
    DeliveryLedger,
    StreamAttempt,
)

MACHINE = "turn"

IDLE = "idle"
STREAM_ATTEMPT = "stream_attempt"
FALLBACK_ATTEMPT = "fallback_attempt"
FINISHED = "finished"

STATES = [IDLE, STREAM_ATTEMPT, FALLBACK_ATTEMPT, FINISHED]

TABLE: list[dict[str, Any]] = [
    {"trigger": "begin", "source": IDLE, "dest": STREAM_ATTEMPT},
    {"trigger": "fall_back", "source": STREAM_ATTEMPT, "dest": FALLBACK_ATTEMPT,
     "conditions": "attempt_handed_over"},
    {"trigger": "retry", "source": STREAM_ATTEMPT, "dest": STREAM_ATTEMPT,
     "conditions": ["attempt_retired_for_fault", "stream_attempts_left"]},
    {"trigger": "finish", "source": [STREAM_ATTEMPT, FALLBACK_ATTEMPT], "dest": FINISHED},
]

_OUTCOME_OF_REASON = {"completed": "completed", "incomplete": "incomplete", "failed": "failed"}

_FAULT_MESSAGES = {
    "drop": "the connection was lost before the response ended",
    "read_timeout": "reading the stream timed out",
    "connect_error": "could not connect to the server",
    "idle_timeout": "no data arrived within the idle timeout",
    "eof": "the stream ended without a terminal event",
}


class TurnMachine:
    """One turn: attempts, retries, fallback, outcome. Sans-I/O."""

    state: str

    def __init__(self, policy: TurnPolicy, sink: AttemptSink) -> None:
        self.policy = policy
        self.sink = sink
        self.ledger = DeliveryLedger()
        self.attempts: list[StreamAttempt] = []
        self.transitions: list[Transition] = []
        self._result: TurnResult | None = None
        Machine(
            model=self,
            states=STATES,
            transitions=TABLE,
            initial=IDLE,
            auto_transitions=False,
            send_event=True,
            ignore_invalid_triggers=True,
            after_state_change="_after_state_change",
        )

    # -- the sink the attempts write to: keep transition records, pass everything on -----------
    def transition(self, machine: str, attempt: int, source: str, dest: str, trigger: str) -> Any:
        record = self.sink.transition(machine, attempt, source, dest, trigger)
        self.transitions.append(record)
        return record

    def effect(self, kind: EffectKind, attempt: int, data: Any = None) -> None:
        self.sink.effect(kind, attempt, data)

    def _after_state_change(self, event: Any) -> None:
        number = len(self.attempts) + (0 if event.transition.dest == FINISHED else 1)
        self.transition(MACHINE, number, event.transition.source, event.transition.dest,
                        event.event.name)

    # -- conditions ----------------------------------------------------------------------------
    @property
    def max_stream_attempts(self) -> int:
        return 1 + self.policy.max_stream_retries

    def attempt_handed_over(self, event: Any) -> bool:
        return self.attempts[-1].state == FALLBACK

    def attempt_retired_for_fault(self, event: Any) -> bool:
        last = self.attempts[-1]
        return last.state == RETIRE and last.reason != "interrupted"

    def stream_attempts_left(self, event: Any) -> bool:
        return len(self.attempts) < self.max_stream_attempts

    # -- driving -------------------------------------------------------------------------------
    @property
    def current(self) -> StreamAttempt | None:
        return self.attempts[-1] if self.attempts else None

    def next_attempt(self) -> StreamAttempt | None:
        """The attempt to run now, or None when the turn is over."""
        if self.state == FINISHED:
            return None
        if self.state == IDLE:
            self.trigger("begin")
            return self._open("stream")
        if not self.attempts[-1].is_final:
            raise RuntimeError("the current attempt has not ended; feed it until it is final")
        # `fall_back` and `retry` only leave `stream_attempt`; firing them elsewhere would make
        # the transitions library log a warning for a call that is not an error.
        if self.state == STREAM_ATTEMPT:
            if self.trigger("fall_back"):
                return self._open("fallback")
            if self.trigger("retry"):
                return self._open("stream")
        self.trigger("finish")
        self._result = self._build_result()
        return None

    def _open(self, kind: str) -> StreamAttempt:
        number = len(self.attempts) + 1
        attempt = StreamAttempt(
            number,
            kind,
            sink=self,
            ledger=self.ledger,
            hands_over_to_fallback=(
                kind == "stream" and self.policy.fallback and number == self.max_stream_attempts
            ),
            retry_failed_codes=self.policy.retry_failed_codes,
        )
        self.attempts.append(attempt)
        return attempt

    # -- outcome -------------------------------------------------------------------------------
    def result(self) -> TurnResult:
        if self._result is None:
            raise RuntimeError("the turn has not finished")
        return self._result

    def _build_result(self) -> TurnResult:
        last = self.attempts[-1]
        error = last.error
        if last.state == TERMINAL:
            outcome = _OUTCOME_OF_REASON.get(last.reason, "error")
        elif last.reason == "interrupted":
            outcome = "interrupted"
        elif last.reason.startswith("failed:"):  # a retryable response.failed, nothing left to try
            outcome = "failed"
        else:
            outcome = "error"
            error = {
                "message": _FAULT_MESSAGES.get(last.reason, last.reason),
                "code": last.reason,
                "type": "transport_error",
            }
        response = last.final_response() if last.state == TERMINAL or outcome == "failed" else None
        if response is not None:
            items = response["output"]
            calls = _merge_calls(tool_calls_of(items), tool_calls_of(last.partial_items()))
        else:
            source = next((a for a in reversed(self.attempts) if not a.assembly.is_empty()), last)
            items = source.partial_items()
            calls = tool_calls_of(items)
        for call in calls:
            self.effect("tool_call", last.number, call)
        if error is not None:
            self.effect("error", last.number, error)
        return TurnResult(
            outcome=outcome,
            response=response,
            output_text=join_output_text(items),
            tool_calls=calls,
            error=error,
            attempts=[Attempt(a.number, a.kind, a.state, a.reason) for a in self.attempts],
            transitions=list(self.transitions),
            rate_limits=[p for a in self.attempts for p in a.rate_limits],
        )


def _merge_calls(sent: list[dict[str, Any]], streamed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The server's calls, plus any streamed call its final output left out."""
    known = {c["call_id"] for c in sent}
    return sent + [c for c in streamed if c["call_id"] not in known]
