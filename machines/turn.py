"""The turn machine: which attempts a turn makes, and what the turn's outcome is.

Theory of operation
===================

A turn is a sequence of stream attempts (`machines.stream_attempt`; kind "stream", or "resume"
for a background response continued), at most `1 + policy.max_stream_retries` of them, possibly
followed by one fallback attempt (the seed's `create(stream=True)`), and then an outcome.
Sans-I/O, like the attempts: the driver calls `next_attempt()`, which returns the attempt to run
(or None: the turn is over) and the turn's own decisions (its transitions; when it finishes, the
`tool_call`, `error` and `cancel` effects); the driver records them, feeds the attempt until it
is final, and asks again. `result()` then holds the
`TurnResult`.

States and rules (the `TABLE` below, `machines.table` rows; rows are tried in order, the first
whose guards hold fires; each decides, as a `Step`, which attempt opens next and which budget
pays for it):

    idle              nothing sent yet; `begin` opens stream attempt 1.
    stream_attempt    a stream attempt is running. When it ends:
                      - `finish` at once if it ended on the turn's wall-clock limit
                        (`TurnTimeout`, `policy.turn_timeout_s`), whatever budget is left;
                      - `http_retry` if its final row asks for the same request again (an HTTP
                        retryable status, no response at all) and the HTTP budget allows: the
                        same kind of attempt, after the `wait` effect;
                      - `fall_back` if it ended in `fallback` (a fault on the last stream attempt,
                        fallback allowed): one fallback attempt follows;
                      - `resume` if the turn is resumable (a background request,
                        `policy.resume`), the attempt broke on a byte-stream fault after the
                        response's id and a sequence number came, and stream attempts are left:
                        a `resume` attempt continues the same response after the last sequence
                        number (see `machines.stream_attempt`);
                      - `retry` if its final row allows a retry and stream attempts are left;
                      - otherwise `finish`.
    fallback_attempt  the fallback attempt is running; when it ends, `finish`.
    finished          final.

The turn's wall-clock limit is an input like any other: the driver watches the clock and feeds
the running attempt a `TurnTimeout` once the limit has passed, or feeds it to the attempt about
to be sent when the wait before it (an HTTP retry's) would pass the limit; the attempt ends
(`machines.stream_attempt`) and the turn finishes with outcome "error", error code
`turn_timeout`.

On an interrupt, or past the wall-clock limit, a background response whose id is known is
cancelled: the turn's last decision is a `cancel` effect naming the response, which the driver
sends (`POST /v1/responses/{id}/cancel`).

Outcome: the last attempt's `Ending.outcome`, read off the stream-attempt table's final row that
fired (`terminal` after `response.completed` / `.incomplete` / `.failed` gives that outcome; an
`error` frame or an HTTP error status gives "error" with the provider's words; an interrupt gives
"interrupted"; a retryable `response.failed` with nothing left to try gives "failed" with the
provider's words; any other fault with nothing left gives "error" with a transport error naming
the fault). Output comes from the terminal response (backfilled when empty or null); without one,
from the latest attempt that streamed anything, so partial output survives every failure and two
attempts are never mixed. The same items give `answer_text`, `commentary` and `refusal`
(`machines.output.answer_of`). On "error" or "interrupted" none of them holds less than the user
already saw: when the assembled text is shorter than what the ledger delivered, the delivered text
stands in (for `output_text`, the answer and the commentary in the order they were delivered,
which is what `on_text_delta` got when commentary had no callback of its own).
"""

from __future__ import annotations

import random
from enum import StrEnum
from typing import Any, Final, Literal

import attrs

from machines.output import (
    CLIENT_CALL_TYPES,
    OUTPUT_ITEM_TYPES,
    answer_of,
    item_type,
    join_output_text,
    tool_calls_of,
)
from machines.records import (
    Attempt,
    AttemptKind,
    Decision,
    Effect,
    Fault,
    InputKind,
    Transition,
    TurnPolicy,
    TurnResult,
)
from machines.stream_attempt import FAULTS, DeliveryLedger, Ending, StreamAttempt
from machines.stream_attempt import State as AttemptState
from machines.table import Row, Table

__all__ = ["MACHINE", "TABLE", "State", "Step", "Trigger", "TurnMachine"]

MACHINE: Final = "turn"


class State(StrEnum):
    """The states of a turn."""

    IDLE = "idle"
    STREAM_ATTEMPT = "stream_attempt"
    FALLBACK_ATTEMPT = "fallback_attempt"
    FINISHED = "finished"


class Trigger(StrEnum):
    """What moves a turn: it begins, and each of its attempts ends."""

    BEGIN = "begin"
    ATTEMPT_ENDED = "attempt_ended"


@attrs.frozen(slots=True)
class Step:
    """What a turn row decides: the kind of attempt to open next (`"same"`: the kind of the one
    that just ended, an HTTP retry; None: the turn is over) and the budget that pays for it
    (`"stream"`: a stream attempt, `"http"`: an HTTP retry, which waits first; None: free)."""

    opens: AttemptKind | Literal["same"] | None
    pays: Literal["stream", "http"] | None = None


# -- guards: pure conditions of the turn, on the attempt that just ended -------------------------


def attempt_ran_out_of_time(turn: TurnMachine) -> bool:
    """The attempt ended on the turn's wall-clock limit (`TurnTimeout`)."""
    return turn.last_ending().trigger is InputKind.TURN_TIMEOUT


def attempt_wants_http_retry(turn: TurnMachine) -> bool:
    """The attempt's final row asks for the same request again (an HTTP-level failure)."""
    return turn.last_ending().retry == "http"


def attempt_handed_over(turn: TurnMachine) -> bool:
    """The stream attempt ended in `fallback`."""
    return turn.last_ending().state is AttemptState.FALLBACK


def attempt_broke_resumably(turn: TurnMachine) -> bool:
    """The turn is resumable and the attempt's byte stream broke (a drop, a read or idle
    timeout, an end without a terminal event) after its response's id and a sequence number
    came."""
    return (
        turn.resumable
        and turn.last_ending().trigger in FAULTS
        and turn.attempts[-1].can_be_resumed
    )


def attempt_may_retry(turn: TurnMachine) -> bool:
    """The attempt's final row allows another stream attempt (a fault, a retryable failure)."""
    return turn.last_ending().retry == "stream"


def stream_attempts_left(turn: TurnMachine) -> bool:
    """Fewer than `1 + policy.max_stream_retries` stream attempts were made."""
    return turn.stream_tries < 1 + turn.policy.max_stream_retries


_S = State
_ENDED = Trigger.ATTEMPT_ENDED

ROWS: Final[list[Row[TurnMachine, Step]]] = [
    Row(Trigger.BEGIN, _S.IDLE, _S.STREAM_ATTEMPT, decides=Step("stream", "stream")),
    # past the turn's wall-clock limit: nothing more is tried
    Row(_ENDED, (_S.STREAM_ATTEMPT, _S.FALLBACK_ATTEMPT), _S.FINISHED,
        guards=attempt_ran_out_of_time, decides=Step(None), name="finish"),
    # an HTTP-level failure (a retryable status, no response at all): the same request again,
    # after a wait, paid by the HTTP retry budget
    Row(_ENDED, _S.STREAM_ATTEMPT, _S.STREAM_ATTEMPT, guards=attempt_wants_http_retry,
        decides=Step("same", "http"), name="http_retry"),
    Row(_ENDED, _S.FALLBACK_ATTEMPT, _S.FALLBACK_ATTEMPT, guards=attempt_wants_http_retry,
        decides=Step("same", "http"), name="http_retry"),
    Row(_ENDED, _S.STREAM_ATTEMPT, _S.FALLBACK_ATTEMPT, guards=attempt_handed_over,
        decides=Step("fallback"), name="fall_back"),
    # a background response's stream broke after its id and a sequence number came: continue it
    # (GET .../responses/{id}?stream=true&starting_after=N), paid by the stream retry budget
    Row(_ENDED, _S.STREAM_ATTEMPT, _S.STREAM_ATTEMPT,
        guards=(attempt_broke_resumably, stream_attempts_left),
        decides=Step("resume", "stream"), name="resume"),
    Row(_ENDED, _S.STREAM_ATTEMPT, _S.STREAM_ATTEMPT,
        guards=(attempt_may_retry, stream_attempts_left),
        decides=Step("stream", "stream"), name="retry"),
    Row(_ENDED, (_S.STREAM_ATTEMPT, _S.FALLBACK_ATTEMPT), _S.FINISHED, decides=Step(None),
        name="finish"),
    # a finished turn opens nothing more
    Row(Trigger.BEGIN, _S.FINISHED),
    Row(_ENDED, _S.FINISHED),
]

TABLE: Final[Table[TurnMachine, Step]] = Table(
    MACHINE, State, Trigger, ROWS, initial=State.IDLE, final={State.FINISHED}
)

#: The error of a turn that ended on a byte-stream fault, by the fault.
FAULT_MESSAGES: Final[dict[StrEnum, str]] = {
    Fault.DROP: "the connection was lost before the response ended",
    Fault.READ_TIMEOUT: "reading the stream timed out",
    Fault.CONNECT_ERROR: "could not connect to the server",
    InputKind.IDLE_TIMEOUT: "no data arrived within the idle timeout",
    InputKind.EOF: "the stream ended without a terminal event",
    InputKind.EVENT_TOO_LARGE: "one server-sent event was larger than the policy's max_event_bytes",
    InputKind.TURN_TIMEOUT: "the turn ran past its turn_timeout_s",
}

#: The error `type` of a turn that ended on something other than the server's words, where it is
#: not a transport error.
ERROR_TYPES: Final[dict[StrEnum, str]] = {InputKind.TURN_TIMEOUT: "turn_timeout"}

#: Exponential back-off before an HTTP retry when the server names no wait: 0.5 s doubling,
#: at most 8 s, the upper half of it drawn at random (seeded: replay draws the same waits).
BACKOFF_FIRST_S: Final = 0.5
BACKOFF_MAX_S: Final = 8.0


class TurnMachine:
    """One turn: attempts, retries, fallback, outcome. Sans-I/O."""

    state: State

    def __init__(self, policy: TurnPolicy, seed: int = 0, *, background: bool = False) -> None:
        """`background`: the request asks for a background response (`background: true`), which
        the turn resumes after a broken stream when `policy.resume` allows."""
        self.state = State.IDLE
        self.policy = policy
        self.background = background
        self.resumable = background and policy.resume
        self.ledger = DeliveryLedger()
        self.attempts: list[StreamAttempt] = []
        #: Stream attempts begun or retried (HTTP retries of one attempt do not count).
        self.stream_tries = 0
        self.http_retries = 0
        self._random = random.Random(seed)
        self._result: TurnResult | None = None
        self._out: list[Decision] = []

    def last_ending(self) -> Ending:
        """How the attempt that just ended ended."""
        ending = self.attempts[-1].ending
        if ending is None:
            raise RuntimeError("the current attempt has not ended; feed it until it is final")
        return ending

    def _moved(self, row: Row[TurnMachine, Step], source: State) -> None:
        """A row fired: record the turn's transition, named after the row."""
        assert row.dest is not None and row.decides is not None
        number = len(self.attempts) + (0 if row.decides.opens is None else 1)
        self._out.append(Transition(MACHINE, number, source, row.dest, row.label))

    # -- driving -------------------------------------------------------------------------------
    def next_attempt(self) -> tuple[StreamAttempt | None, list[Decision]]:
        """The attempt to run now (None when the turn is over) and the turn's decisions."""
        if self.attempts:
            self.last_ending()  # the current attempt must have ended
        row = TABLE.fire(self, Trigger.ATTEMPT_ENDED if self.attempts else Trigger.BEGIN)
        step = row.decides
        attempt = None
        opens = step.opens if step is not None else None
        if step is not None and opens is None:
            self._result = self._build_result()
        elif step is not None and opens is not None:
            if step.pays == "stream":
                self.stream_tries += 1
            elif step.pays == "http":
                self.http_retries += 1
            attempt = self._open(self.attempts[-1].kind if opens == "same" else opens)
            if step.pays == "http":
                self._out.append(Effect("wait", attempt.number, self._wait_s()))
        out = self._out
        self._out = []
        return attempt, out

    def _open(self, kind: AttemptKind) -> StreamAttempt:
        policy = self.policy
        attempt = StreamAttempt(
            len(self.attempts) + 1,
            kind,
            ledger=self.ledger,
            hands_over_to_fallback=(
                kind != "fallback"
                and policy.fallback
                and self.stream_tries == 1 + policy.max_stream_retries
            ),
            retry_failed_codes=policy.retry_failed_codes,
            max_retry_wait_s=policy.max_retry_wait_s,
            http_retry_left=self.http_retries < (policy.max_http_retries or 0),
            tracks_sequence=self.background,
            resumes=self.attempts[-1] if kind == "resume" else None,
        )
        self.attempts.append(attempt)
        return attempt

    def _wait_s(self) -> float:
        """Seconds to wait before the HTTP retry just decided: what the server demanded, else
        the jittered back-off."""
        ending = self.attempts[-2].ending
        if ending is not None and ending.wait_s is not None:
            return ending.wait_s
        ceiling = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2.0 ** (self.http_retries - 1))
        return round(ceiling * (0.5 + 0.5 * self._random.random()), 6)

    # -- outcome -------------------------------------------------------------------------------
    def result(self, transitions: list[Transition]) -> TurnResult:
        """The turn's result, once `next_attempt()` returned None; `transitions` are the turn's
        transition records as the event log numbered them."""
        if self._result is None:
            raise RuntimeError("the turn has not finished")
        return attrs.evolve(self._result, transitions=transitions)

    def _build_result(self) -> TurnResult:
        last = self.attempts[-1]
        ending = last.ending
        assert ending is not None  # next_attempt() only finishes after a final attempt
        outcome = ending.outcome
        error = last.error
        if error is None and outcome == "error":
            error = _fault_error(ending)
        response = (
            last.final_response()
            if ending.state is AttemptState.TERMINAL or outcome == "failed"
            else None
        )
        if response is not None:
            items = response["output"]
            calls = _merge_calls(items, last.partial_items(), last.declared_tools())
        else:
            source = next((a for a in reversed(self.attempts) if not a.assembly.is_empty()), last)
            items = source.partial_items()
            calls = tool_calls_of(items, source.declared_tools())
        if outcome == "completed":
            calls = [{**call, "status": "completed"} for call in calls]
        output_text = join_output_text(items)
        answer = answer_of(items)
        answer_text, commentary, refusal = answer.answer_text, answer.commentary, answer.refusal
        if outcome in ("error", "interrupted"):  # never less than the user already saw
            ledger = self.ledger
            shown = ledger.shown()
            if len(output_text) < len(shown):
                output_text = shown
            if len(answer_text) < ledger.text.length:
                answer_text = ledger.delivered("text")
            if len("".join(commentary)) < ledger.commentary.length:
                commentary = ledger.commentary_messages()
            if len(refusal or "") < ledger.refusal.length:
                refusal = ledger.delivered("refusal")
        out = self._out
        out.extend(Effect("tool_call", last.number, call) for call in calls)
        if error is not None:
            out.append(Effect("error", last.number, error))
        gave_up = outcome == "interrupted" or ending.trigger is InputKind.TURN_TIMEOUT
        if gave_up and last.response_id is not None:
            # a background response keeps generating (and costing) unless it is cancelled
            out.append(Effect("cancel", last.number, last.response_id))
        return TurnResult(
            outcome=outcome,
            response=response,
            output_text=output_text,
            answer_text=answer_text,
            commentary=commentary,
            refusal=refusal,
            tool_calls=calls,
            error=error,
            attempts=[Attempt(a.number, a.kind, a.state, a.reason) for a in self.attempts],
            transitions=[],
            rate_limits=[p for a in self.attempts for p in a.rate_limits],
        )


def _fault_error(ending: Ending) -> dict[str, Any]:
    return {
        "message": FAULT_MESSAGES.get(ending.reason.code, str(ending.reason)),
        "code": str(ending.reason),
        "type": ERROR_TYPES.get(ending.reason.code, "transport_error"),
    }


def _merge_calls(sent: list[Any], streamed: list[dict[str, Any]], tools: Any) -> list[dict[str, Any]]:
    """The client's calls among the server's final output, plus any streamed call it left out,
    judged together: an output item either one holds makes its hosted call the server's."""
    known = [
        item.get("call_id")
        for item in sent
        if isinstance(item, dict) and item_type(item) in CLIENT_CALL_TYPES
    ]
    left_out = [
        item
        for item in streamed
        if (item_type(item) in CLIENT_CALL_TYPES and item.get("call_id") not in known)
        or item_type(item) in OUTPUT_ITEM_TYPES
    ]
    return tool_calls_of([*sent, *left_out], tools)
