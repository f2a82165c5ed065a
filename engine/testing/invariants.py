"""Invariants of a turn, checked on any session through the machines the drivers use.

Theory of operation
===================

`check_session(session)` plays a session (`engine.strategies`) through the real sans-I/O loop,
exactly as `run_turn` would minus the socket, and checks what came out against two things:

1. **A reference model** (`reference_turn`), written from the contract and the machine's theory
   of operation, not from its code: a plain-Python re-statement of which frames count, when an
   attempt ends and why, what the turn does next and what the outcome is. It decodes the bytes
   with its own whole-buffer SSE reader (WHATWG rules), so a decoder bug shows up too.
2. **Properties that need no model**, over the callbacks the turn called, the effect records it
   logged and the result it returned.

Every rule has a name (`RULES`); a failure is a list of `Violation(rule, detail)` and, from
`check_session`, an `InvariantViolation` (an `AssertionError`) that prints the rules broken and
the session, short enough to read. The same function serves the property tests, the stateful
test's model (`ReferenceAttempt`) and `streamfsm fuzz`; users can call it with their own
callbacks, whose exceptions are reported as the rule `callback_raised`.

What "text allowed" means (the delivery rules): in attempt N, the *allowed text* A(N) is every
answer-text delta the attempt took in while it was live and before its first function-call frame.
C(N) is all text delivered to `on_text_delta` up to the end of attempt N (C(0) = ""). Then:

    if A(N) starts with C(N-1):   C(N) == A(N)    all new allowed text delivered, nothing else
    otherwise:                    C(N) == C(N-1)  a retry that says something else delivers nothing

From this follow the contract's promises: text never reaches the user after a tool call was seen
in that attempt, text delivered is never delivered twice, and nothing the user should see is
held back. Reasoning deltas obey the same rules without the tool-call gate.
"""

from __future__ import annotations

import atexit
import email.utils
import os
import re
import shutil
import tempfile
import traceback
from typing import Any, Final, Iterable

import attrs
import orjson

from engine.log.eventlog import Callbacks
from engine.log.redaction import scrub
from engine.drivers.replay import replay_trace
from engine.testing.strategies import Session, Step, play_session
from machines.records import (
    Chunk,
    Effect,
    EndOfStream,
    HttpError,
    Interrupt,
    Stall,
    Transition,
    TransportFault,
    TurnPolicy,
    TurnResult,
)
from engine.log.trace import read_trace
from machines.stream_attempt import FINAL as ATTEMPT_FINAL
from machines.stream_attempt import MACHINE as ATTEMPT_MACHINE
from machines.stream_attempt import TABLE as ATTEMPT_TABLE
from machines.turn import FINISHED
from machines.turn import MACHINE as TURN_MACHINE

__all__ = [
    "RULES",
    "InvariantViolation",
    "ReferenceAttempt",
    "ReferenceTurn",
    "Violation",
    "check_session",
    "reference_events",
    "reference_turn",
    "session_violations",
]

RULES: Final[dict[str, str]] = {
    "no_raise": "playing a session never raises (only a wrong call may)",
    "one_final_state": "every attempt ends in exactly one final state, reached by a transition "
    "of the table; the turn machine finishes exactly once",
    "outcome": "the turn ends with one of the five outcomes, the one the reference model gives",
    "attempts_as_reference": "each attempt ends as the reference model says (kind, final state, "
    "reason), and the turn makes the attempts it says (no retry of an outcome)",
    "first_delta_once": "on_first_delta fires at most once, exactly when text is delivered, "
    "before the first text delta",
    "no_text_after_tool_call": "no text reaches on_text_delta after a function-call frame was "
    "seen in that attempt",
    "delivered_once": "text delivered to callbacks is never delivered again, and a retry that "
    "says something else delivers nothing",
    "nothing_lost": "every text delta the server sent before the end is delivered (when "
    "allowed) and kept in output_text",
    "reasoning_delivery": "reasoning deltas are delivered once each, across retries too",
    "callbacks_match_effects": "the callbacks receive exactly the effects the trace records",
    "tool_calls_once": "every function call announced appears exactly once in tool_calls, with "
    "its arguments, `completed` unless the stream broke before its arguments finished",
    "never_less_than_seen": "on error or interrupted, output_text is never shorter than the text "
    "delivered to on_text_delta",
    "error_verbatim": "the provider's error words reach TurnResult.error verbatim",
    "replay_identical": "the recorded trace replays to identical records and outcome",
    "trace_roundtrip": "the trace reads back from its file with every record",
    "callback_raised": "a callback supplied by the caller raised",
}

OUTCOMES: Final = ("completed", "incomplete", "failed", "error", "interrupted")

AWAITING = "awaiting_created"
STREAMING = "streaming"
TOOL_CALL = "tool_call"
TERMINAL = "terminal"
FALLBACK = "fallback"
RETIRE = "retire"
FINAL: Final = frozenset({TERMINAL, FALLBACK, RETIRE})


@attrs.frozen(slots=True)
class Violation:
    """One rule of `RULES` broken by a session, and what showed it."""

    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.detail}"


class InvariantViolation(AssertionError):
    """One or more rules broken by one session."""

    def __init__(self, violations: list[Violation], session: Session) -> None:
        self.violations = violations
        self.session = session
        lines = [f"{len(violations)} invariant(s) broken:"]
        lines += [f"  - {v}" for v in violations]
        lines += ["session:", *("  " + line for line in session.describe().splitlines())]
        super().__init__("\n".join(lines))

    @property
    def rules(self) -> list[str]:
        """The names of the rules broken, sorted, each once."""
        return sorted({v.rule for v in self.violations})


# --------------------------------------------------------------------------------------------
# The reference SSE reader: whole buffer, WHATWG rules


def reference_events(data: bytes, *, ended: bool) -> list[tuple[str, str]]:
    """(event name, data) of every event the bytes dispatch. A line end is CRLF, LF or CR; an
    event is dispatched by a blank line; an unterminated last line is not a line (`ended`: the
    body ended cleanly, which settles nothing more under these rules)."""
    text = data.decode("utf-8", "replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")[:-1]
    events: list[tuple[str, str]] = []
    name = ""
    buffer: list[str] | None = None
    for line in lines:
        if not line:
            if buffer is not None:
                events.append((name or "message", "\n".join(buffer)))
            name, buffer = "", None
            continue
        if line.startswith(":"):
            continue
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            buffer = [value] if buffer is None else [*buffer, value]
        elif field == "event":
            name = value
    return events


# --------------------------------------------------------------------------------------------
# The reference model


class ReferenceLedger:
    """What reached the user this turn, per channel."""

    def __init__(self) -> None:
        self.text = ""
        self.reasoning = ""


class _Delivery:
    """One attempt's delivery on one channel: repeat what was delivered, then deliver the rest."""

    def __init__(self, behind: str) -> None:
        self.behind = behind
        self.said = ""
        self.off = False

    def take(self, delta: str) -> str:
        if self.off:
            return ""
        before = len(self.said)
        self.said += delta
        if len(self.said) <= len(self.behind):
            if not self.behind.startswith(self.said):
                self.off = True
            return ""
        if not self.said.startswith(self.behind):
            self.off = True
            return ""
        return self.said[max(before, len(self.behind)) :]


class ReferenceAttempt:
    """The stream-attempt machine, re-stated plainly: `event(name, data)` for each dispatched
    event, then `end(step)` for the step that ends the body. `state`, `reason` and the
    bookkeeping below are what the invariants compare with."""

    def __init__(
        self,
        number: int,
        kind: str,
        *,
        hands_over: bool,
        retry_codes: frozenset[str],
        ledger: ReferenceLedger,
        http_left: bool = False,
        max_wait_s: float = 60.0,
    ) -> None:
        self.number = number
        self.kind = kind
        self.hands_over = hands_over
        self.retry_codes = retry_codes
        self.ledger = ledger
        self.http_left = http_left
        self.max_wait_s = max_wait_s
        self.state = AWAITING
        self.reason = ""
        #: which budget may pay for another attempt: "stream", "http" or None
        self.retry: str | None = None
        self.tool_seen = False
        self.allowed_text = ""  # text deltas taken in before the first function-call frame
        self.text_deltas: list[str] = []  # every text delta taken in while live
        self.reasoning = ""
        self.delivered_text: list[str] = []
        self.delivered_reasoning: list[str] = []
        self.first_delta = False
        self.response: dict[str, Any] | None = None
        self.words: dict[str, Any] | None = None  # the provider's error words
        self.touched = False  # any output content taken in (items, deltas, done texts)
        self.kinds: dict[int, str] = {}  # output_index -> item kind, as first seen
        self.done: dict[int, dict[str, Any]] = {}
        self.call_ids: list[str] = []  # function calls announced, by call_id
        self.call_index: dict[str, int] = {}
        self.arguments: dict[int, list[str]] = {}
        self.arguments_done: dict[int, str] = {}
        self._text = _Delivery(ledger.text)
        self._reasoning = _Delivery(ledger.reasoning)

    @property
    def final(self) -> bool:
        """The attempt has ended (terminal, fallback or retire)."""
        return self.state in FINAL

    # -- events --------------------------------------------------------------------------------
    def event(self, name: str, data: str) -> None:
        """One dispatched SSE event (`name`, `data`); ignored once the attempt has ended."""
        if self.final:
            return
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(payload, dict):
            return
        kind = payload.get("type")
        if not isinstance(kind, str):
            kind = "error" if isinstance(payload.get("error"), dict) else name
        index = payload.get("output_index")
        index = index if type(index) is int else None
        if kind in ("response.created", "response.in_progress"):
            self._begin()
        elif kind == "response.output_text.delta":
            delta = payload.get("delta")
            if isinstance(delta, str):
                self._begin()
                self._content(index, "message")
                self.text_deltas.append(delta)
                if not self.tool_seen and delta:
                    self.allowed_text += delta
                    self._deliver_text(delta)
        elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            delta = payload.get("delta")
            if isinstance(delta, str):
                self._begin()
                self._content(index, "reasoning")
                if delta:
                    self.reasoning += delta
                    piece = self._reasoning.take(delta)
                    if piece:
                        self.ledger.reasoning += piece
                        self.delivered_reasoning.append(piece)
        elif kind == "response.output_text.done":
            if isinstance(payload.get("text"), str):
                self._content(index, "message")
        elif kind == "response.output_item.added":
            item = payload.get("item")
            if isinstance(item, dict):
                self.touched = True
                if index is not None:
                    self.kinds[index] = str(item.get("type") or "message")
                if item.get("type") == "function_call":
                    self._announce(item, index)
                    self._tool_frame()
                else:
                    self._begin()
        elif kind == "response.output_item.done":
            item = payload.get("item")
            if isinstance(item, dict):
                self.touched = True
                if index is not None:
                    self.done[index] = item
                if item.get("type") == "function_call":
                    self._announce(item, index)
                    self._tool_frame()
                    if self.open_calls() == 0:
                        self.state = STREAMING
                else:
                    self._begin()
        elif kind == "response.function_call_arguments.delta":
            delta = payload.get("delta")
            if isinstance(delta, str):
                self._content(index, "function_call")
                if index is not None:
                    self.arguments.setdefault(index, []).append(delta)
            self._tool_frame()
        elif kind == "response.function_call_arguments.done":
            arguments = payload.get("arguments")
            if isinstance(arguments, str):
                self._content(index, "function_call")
                if index is not None:
                    self.arguments_done[index] = arguments
            self._tool_frame()
        elif kind in ("response.completed", "response.incomplete"):
            self._end_response(kind.split(".")[1], payload)
        elif kind == "response.failed":
            self._end_response("failed", payload)
        elif kind == "error":
            nested = payload.get("error")
            source = nested if isinstance(nested, dict) else payload
            self.words = {"message": source.get("message"), "code": source.get("code")}
            self._finish(TERMINAL, "error_frame")
        elif "function_call" in kind:
            self._tool_frame()

    def _begin(self) -> None:
        if self.state == AWAITING:
            self.state = STREAMING

    def _content(self, index: int | None, kind: str) -> None:
        self.touched = True
        if index is not None:
            self.kinds.setdefault(index, kind)

    def _announce(self, item: dict[str, Any], index: int | None) -> None:
        call_id = item.get("call_id")
        if isinstance(call_id, str) and call_id not in self.call_index:
            self.call_ids.append(call_id)
            self.call_index[call_id] = index if index is not None else -1

    def open_calls(self) -> int:
        """How many function calls were announced and are not yet `done`."""
        return sum(1 for i, k in self.kinds.items() if k == "function_call" and i not in self.done)

    def _tool_frame(self) -> None:
        self.tool_seen = True
        if self.state in (AWAITING, STREAMING):
            self.state = TOOL_CALL

    def _deliver_text(self, delta: str) -> None:
        piece = self._text.take(delta)
        if piece:
            if not self.ledger.text:
                self.first_delta = True
            self.ledger.text += piece
            self.delivered_text.append(piece)

    def _end_response(self, how: str, payload: dict[str, Any]) -> None:
        response = payload.get("response")
        self.response = response if isinstance(response, dict) else {}
        if how != "failed":
            self._finish(TERMINAL, how)
            return
        error = self.response.get("error")
        error = error if isinstance(error, dict) else {}
        self.words = {"message": error.get("message"), "code": error.get("code")}
        code = error.get("code")
        if isinstance(code, str) and code in self.retry_codes:
            self._finish(FALLBACK if self.hands_over else RETIRE, f"failed:{code}", "stream")
        else:
            self._finish(TERMINAL, "failed")

    def _finish(self, state: str, reason: str, retry: str | None = None) -> None:
        self.state = state
        self.reason = reason
        self.retry = retry

    # -- the step that ends the body -------------------------------------------------------------
    def end(self, step: Step, idle_timeout_s: float | None = None) -> None:
        """The step that ended the body (end of stream, fault, stall past the idle timeout,
        interrupt, HTTP error); ignored once the attempt has ended."""
        if self.final:
            return
        if isinstance(step, HttpError):
            self.words = _http_words(step)
            wait = _demanded_wait(step)
            if (
                (step.status in (408, 409, 429) or 500 <= step.status <= 599)
                and (wait is None or wait <= self.max_wait_s)
                and self.http_left
            ):
                self._finish(RETIRE, f"http_{step.status}", "http")
            else:
                self._finish(TERMINAL, f"http_{step.status}")
        elif isinstance(step, Interrupt):
            self._finish(RETIRE, "interrupted")
        elif isinstance(step, TransportFault) and step.kind == "connect_error":
            # no response at all: the HTTP budget pays, never a stream retry or the fallback
            self._finish(RETIRE, "connect_error", "http" if self.http_left else None)
        else:
            reason = (
                step.kind
                if isinstance(step, TransportFault)
                else "idle_timeout" if isinstance(step, Stall) else "eof"
            )
            self._finish(FALLBACK if self.hands_over else RETIRE, reason, "stream")


def _demanded_wait(step: HttpError) -> float | None:
    """The contract's wait, re-stated: `retry-after-ms`, else `Retry-After` (seconds or an HTTP
    date from when the answer came), else "try again in N s" in the message."""
    headers = dict(step.headers)
    if "retry-after-ms" in headers:
        try:
            value = float(headers["retry-after-ms"]) / 1000
            if value >= 0 and value == value and value != float("inf"):
                return value
        except ValueError:
            pass
    if "retry-after" in headers:
        text = headers["retry-after"]
        try:
            value = float(text)
            if value >= 0 and value == value and value != float("inf"):
                return value
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError):
                when = None
            if when is not None and when.tzinfo is not None and step.received_at is not None:
                return max(0.0, when.timestamp() - step.received_at)
    message = _http_words(step).get("message")
    if isinstance(message, str):
        found = re.search(r"try again in (\d+(?:\.\d+)?)\s*(ms|s|sec|seconds?)\b", message,
                          re.IGNORECASE)
        if found:
            amount = float(found.group(1))
            return amount / 1000 if found.group(2).lower() == "ms" else amount
    return None


def _http_words(step: HttpError) -> dict[str, Any]:
    body = step.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        words = {"message": body["error"].get("message"), "code": body["error"].get("code")}
    elif isinstance(body, dict) and "message" in body:
        words = {"message": body.get("message"), "code": body.get("code")}
    else:
        words = {
            "message": body if isinstance(body, str) and body else f"HTTP {step.status}",
            "code": None,
        }
    words["status"] = step.status
    return words


@attrs.frozen
class ReferenceTurn:
    """What the reference model says a turn does: its attempts, in order, and its outcome."""

    attempts: list[ReferenceAttempt]
    outcome: str

    @property
    def last(self) -> ReferenceAttempt:
        """The attempt that ended the turn."""
        return self.attempts[-1]


def _ends_body(step: Step, policy: TurnPolicy) -> bool:
    if isinstance(step, Stall):
        return policy.idle_timeout_s is not None and step.seconds >= policy.idle_timeout_s
    return not isinstance(step, Chunk)


def _play_reference(attempt: ReferenceAttempt, script: Iterable[Step], policy: TurnPolicy) -> None:
    received = b""
    ending: Step = EndOfStream()
    for step in script:
        if isinstance(step, Chunk):
            received += step.data
        elif _ends_body(step, policy):
            ending = step
            break
    for name, data in reference_events(received, ended=isinstance(ending, EndOfStream)):
        attempt.event(name, data)
        if attempt.final:
            return
    attempt.end(ending)


def reference_turn(session: Session) -> ReferenceTurn:
    """What the contract says the turn does with `session`."""
    policy = session.policy
    ledger = ReferenceLedger()
    most = 1 + policy.max_stream_retries
    http_budget = policy.max_http_retries or 0
    attempts: list[ReferenceAttempt] = []
    kind = "stream"
    stream_tries = 1
    http_retries = 0
    while True:
        number = len(attempts) + 1
        attempt = ReferenceAttempt(
            number,
            kind,
            hands_over=kind == "stream" and policy.fallback and stream_tries == most,
            retry_codes=policy.retry_failed_codes,
            ledger=ledger,
            http_left=http_retries < http_budget,
            max_wait_s=policy.max_retry_wait_s,
        )
        attempts.append(attempt)
        index = number - 1
        script = (
            session.attempts[index] if index < len(session.attempts) else (TransportFault("connect_error"),)
        )
        _play_reference(attempt, script, policy)
        if attempt.retry == "http":
            http_retries += 1
            continue
        if attempt.state == FALLBACK:
            kind = "fallback"
            continue
        if attempt.retry == "stream" and kind == "stream" and stream_tries < most:
            stream_tries += 1
            continue
        break
    last = attempts[-1]
    if last.state == TERMINAL:
        outcome = last.reason if last.reason in ("completed", "incomplete", "failed") else "error"
    elif last.reason == "interrupted":
        outcome = "interrupted"
    elif last.reason.startswith("failed:"):  # a retried response.failed, nothing left to try
        outcome = "failed"
    else:
        outcome = "error"
    return ReferenceTurn(attempts, outcome)


# --------------------------------------------------------------------------------------------
# Checking a played session


class _Observer:
    """Callbacks that note every call, and pass it on to the caller's callbacks."""

    def __init__(self, user: Callbacks | None) -> None:
        self.calls: list[tuple[str, str | None]] = []
        self.errors: list[str] = []
        self.user = user or Callbacks()

    def _pass(self, name: str, callback: Any, *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception as error:  # the caller's bug: a finding, not a crash of the check
            frames = traceback.extract_tb(error.__traceback__)
            where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
            self.errors.append(f"{name} raised {type(error).__name__}: {error}{where}")

    def callbacks(self) -> Callbacks:
        def first() -> None:
            self.calls.append(("first_delta", None))
            self._pass("on_first_delta", self.user.on_first_delta)

        def text(delta: str) -> None:
            self.calls.append(("text_delta", delta))
            self._pass("on_text_delta", self.user.on_text_delta, delta)

        def reasoning(delta: str) -> None:
            self.calls.append(("reasoning_delta", delta))
            self._pass("on_reasoning_delta", self.user.on_reasoning_delta, delta)

        return Callbacks(on_first_delta=first, on_text_delta=text, on_reasoning_delta=reasoning)


_workdir: str | None = None


def _scratch() -> str:
    global _workdir
    if _workdir is None:
        memory = "/dev/shm"  # a trace per example: keep it off the disk where there is tmpfs
        where = memory if os.path.isdir(memory) and os.access(memory, os.W_OK) else None
        _workdir = tempfile.mkdtemp(prefix="streamfsm-invariants-", dir=where)
        atexit.register(shutil.rmtree, _workdir, True)
    return _workdir


_ALLOWED = {
    (source, row["trigger"], row["dest"])
    for row in ATTEMPT_TABLE
    for source in ([row["source"]] if isinstance(row["source"], str) else row["source"])
}


def session_violations(
    session: Session,
    callbacks: Callbacks | None = None,
    *,
    replay: bool = True,
    trace: str | os.PathLike[str] | None = None,
) -> tuple[TurnResult | None, list[Violation]]:
    """Play `session` and check every rule; return the result (None if playing raised) and the
    violations found (empty: all rules hold). `replay` writes the trace (to `trace`, else a
    scratch file) and replays it."""
    observer = _Observer(callbacks)
    try:
        recording = play_session(session, observer.callbacks())
        path = (
            os.fspath(trace)
            if trace is not None
            else (os.path.join(_scratch(), f"{os.getpid()}.jsonl") if replay else None)
        )
        result = recording.finish(path)
    except Exception as error:
        return None, [
            Violation("no_raise", "".join(traceback.format_exception_only(error)).strip())
        ]
    found: list[Violation] = [Violation("callback_raised", e) for e in observer.errors[:1]]
    reference = reference_turn(session)
    effects = [r for r in recording.log.records if type(r) is Effect]
    found += _check_states(result, reference)
    found += _check_delivery(observer.calls, effects, reference)
    seen = "".join(text or "" for name, text in observer.calls if name == "text_delta")
    found += _check_output(result, reference, seen)
    found += _check_seen(result, seen)
    found += _check_error(result, reference)
    if replay and path is not None:
        found += _check_replay(path, len(recording.log.records))
    return result, found


def check_session(
    session: Session,
    callbacks: Callbacks | None = None,
    *,
    replay: bool = True,
    trace: str | os.PathLike[str] | None = None,
) -> TurnResult:
    """Play `session`, check every rule, raise `InvariantViolation` if any is broken."""
    result, found = session_violations(session, callbacks, replay=replay, trace=trace)
    if found:
        raise InvariantViolation(found, session)
    assert result is not None
    return result


def _check_states(result: TurnResult, reference: ReferenceTurn) -> list[Violation]:
    found: list[Violation] = []
    if result.outcome not in OUTCOMES:
        found.append(Violation("outcome", f"{result.outcome!r} is not one of {OUTCOMES}"))
    elif result.outcome != reference.outcome:
        found.append(
            Violation("outcome", f"{result.outcome!r}, the reference says {reference.outcome!r}")
        )
    got = [(a.kind, a.final_state, a.reason) for a in result.attempts]
    want = [(a.kind, a.state, a.reason) for a in reference.attempts]
    if got != want:
        found.append(
            Violation("attempts_as_reference", f"attempts {got}, the reference says {want}")
        )
    by_attempt: dict[int, list[Transition]] = {}
    turn_moves: list[Transition] = []
    for t in result.transitions:
        if t.machine == ATTEMPT_MACHINE:
            by_attempt.setdefault(t.attempt, []).append(t)
        elif t.machine == TURN_MACHINE:
            turn_moves.append(t)
    for attempt in result.attempts:
        moves = by_attempt.get(attempt.number, [])
        into_final = [t for t in moves if t.dest in ATTEMPT_FINAL]
        if len(into_final) != 1 or moves[-1] is not into_final[0]:
            found.append(
                Violation(
                    "one_final_state",
                    f"attempt {attempt.number}: {len(into_final)} transitions into a final state "
                    f"({[(t.source, t.trigger, t.dest) for t in moves]})",
                )
            )
        elif into_final[0].dest != attempt.final_state:
            found.append(
                Violation(
                    "one_final_state",
                    f"attempt {attempt.number} reports "
                    f"{attempt.final_state}, its machine ended in {into_final[0].dest}",
                )
            )
        for t in moves:
            if (t.source, t.trigger, t.dest) not in _ALLOWED:
                found.append(
                    Violation(
                        "one_final_state",
                        f"attempt {t.attempt}: transition "
                        f"{t.source} -{t.trigger}-> {t.dest} is not in the table",
                    )
                )
    finished = [t for t in turn_moves if t.dest == FINISHED]
    if len(finished) != 1 or turn_moves[-1] is not finished[0]:
        found.append(
            Violation("one_final_state", f"the turn machine finished {len(finished)} times")
        )
    return found


def _check_channel(
    rule: str, per_attempt: dict[int, str], reference: ReferenceTurn, allowed: str
) -> list[Violation]:
    found: list[Violation] = []
    before = ""
    for attempt in reference.attempts:
        a = getattr(attempt, allowed)
        d = per_attempt.get(attempt.number, "")
        after = before + d
        if a.startswith(before):
            if after != a:
                if after.startswith(a) and before and d and a.startswith(d[: len(a)]):
                    which = rule if rule == "reasoning_delivery" else "delivered_once"
                    found.append(
                        Violation(
                            which,
                            f"attempt {attempt.number} started over: "
                            f"delivered {d!r} again after {before!r}",
                        )
                    )
                elif after.startswith(a):
                    which = rule if rule == "reasoning_delivery" else "no_text_after_tool_call"
                    found.append(
                        Violation(
                            which,
                            f"attempt {attempt.number} delivered "
                            f"{after[len(a):]!r} beyond the allowed {a!r}",
                        )
                    )
                elif a.startswith(after):
                    which = rule if rule == "reasoning_delivery" else "nothing_lost"
                    found.append(
                        Violation(
                            which,
                            f"attempt {attempt.number} held back "
                            f"{a[len(after):]!r} (delivered {after!r})",
                        )
                    )
                else:
                    which = rule if rule == "reasoning_delivery" else "delivered_once"
                    found.append(
                        Violation(
                            which,
                            f"attempt {attempt.number}: delivered so far "
                            f"{after!r}, allowed {a!r}",
                        )
                    )
        elif d:
            which = rule if rule == "reasoning_delivery" else "delivered_once"
            found.append(
                Violation(
                    which,
                    f"attempt {attempt.number} said {a!r}, not a "
                    f"continuation of the delivered {before!r}, yet delivered {d!r}",
                )
            )
        before = after
    return found


def _check_delivery(
    calls: list[tuple[str, str | None]], effects: list[Effect], reference: ReferenceTurn
) -> list[Violation]:
    found: list[Violation] = []
    logged = [
        (e.kind, e.data if e.kind != "first_delta" else None)
        for e in effects
        if e.kind in ("first_delta", "text_delta", "reasoning_delta")
    ]
    if logged != calls:
        found.append(
            Violation(
                "callbacks_match_effects",
                f"callbacks got {calls[:6]}..., the " f"trace records {logged[:6]}...",
            )
        )
    firsts = [i for i, (kind, _) in enumerate(calls) if kind == "first_delta"]
    texts = [i for i, (kind, _) in enumerate(calls) if kind == "text_delta"]
    if len(firsts) > 1:
        found.append(Violation("first_delta_once", f"on_first_delta fired {len(firsts)} times"))
    elif texts and (not firsts or firsts[0] > texts[0]):
        found.append(
            Violation("first_delta_once", "text was delivered without on_first_delta before it")
        )
    elif firsts and not texts:
        found.append(
            Violation("first_delta_once", "on_first_delta fired but no text was delivered")
        )
    text: dict[int, str] = {}
    reasoning: dict[int, str] = {}
    for e in effects:
        if e.kind == "text_delta":
            text[e.attempt] = text.get(e.attempt, "") + e.data
        elif e.kind == "reasoning_delta":
            reasoning[e.attempt] = reasoning.get(e.attempt, "") + e.data
    found += _check_channel("text", text, reference, "allowed_text")
    found += _check_channel("reasoning_delivery", reasoning, reference, "reasoning")
    return found


def _join_text(items: Any) -> str:
    out = []
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict) and item.get("type") == "message":
            for part in item.get("content") or ():
                if (
                    isinstance(part, dict)
                    and part.get("type") == "output_text"
                    and isinstance(part.get("text"), str)
                ):
                    out.append(part["text"])
    return "".join(out)


def _check_output(result: TurnResult, reference: ReferenceTurn, seen: str) -> list[Violation]:
    found: list[Violation] = []
    last = reference.last
    server_output: list[Any] | None = None
    ends_response = last.state == TERMINAL and last.reason in ("completed", "incomplete", "failed")
    if (ends_response or reference.outcome == "failed") and last.response:
        source = last
        output = last.response.get("output")
        if output:
            server_output = output if isinstance(output, list) else None
    else:
        source = next((a for a in reversed(reference.attempts) if a.touched), last)
    if server_output is not None:
        if result.output_text != _join_text(server_output):
            found.append(
                Violation(
                    "nothing_lost",
                    f"output_text {result.output_text!r} is not "
                    f"the server's output text {_join_text(server_output)!r}",
                )
            )
    elif (
        reference.outcome in ("error", "interrupted")
        and len("".join(source.text_deltas)) < len(seen)
        and result.output_text == seen
    ):
        pass  # the latest answer holds less than the user saw: the result keeps what was seen
    else:
        for delta in source.text_deltas:
            if delta and delta not in result.output_text:
                found.append(
                    Violation(
                        "nothing_lost",
                        f"attempt {source.number} streamed "
                        f"{delta!r}, missing from output_text {result.output_text!r}",
                    )
                )
                break
    ids = [c.get("call_id") for c in result.tool_calls]
    expected = list(source.call_ids)
    for item in server_output or ():
        if isinstance(item, dict) and item.get("type") == "function_call":
            if isinstance(item.get("call_id"), str) and item["call_id"] not in expected:
                expected.append(item["call_id"])
    for call_id in expected:
        if ids.count(call_id) != 1:
            found.append(
                Violation(
                    "tool_calls_once",
                    f"call {call_id!r} announced, appears "
                    f"{ids.count(call_id)} times in tool_calls {ids}",
                )
            )
    in_output = {i.get("call_id") for i in server_output or () if isinstance(i, dict)}
    for call in result.tool_calls:
        placed: Any = call.get("call_id")
        if not isinstance(placed, str):
            continue  # a call the reference cannot place (no call_id): its status is not judged
        index = source.call_index.get(placed)
        if reference.outcome != "completed" and placed not in in_output and index is None:
            continue
        finished = (
            reference.outcome == "completed"
            or placed in in_output
            or index in source.done
            or index in source.arguments_done
        )
        if call.get("status") != ("completed" if finished else "incomplete"):
            found.append(
                Violation(
                    "tool_calls_once",
                    f"call {placed!r} has status {call.get('status')!r}; its arguments "
                    f"{'finished' if finished else 'never finished'}",
                )
            )
    for call_id, index in source.call_index.items():
        if call_id in in_output or index in source.done or index in source.arguments_done:
            continue
        want = "".join(source.arguments.get(index, []))
        got = [c.get("arguments") for c in result.tool_calls if c.get("call_id") == call_id]
        if got and got[0] != want:
            found.append(
                Violation(
                    "tool_calls_once",
                    f"call {call_id!r} has arguments " f"{got[0]!r}, its deltas said {want!r}",
                )
            )
    return found


def _check_seen(result: TurnResult, seen: str) -> list[Violation]:
    if result.outcome in ("error", "interrupted") and len(result.output_text) < len(seen):
        return [
            Violation(
                "never_less_than_seen",
                f"output_text {result.output_text!r} is shorter than the delivered {seen!r}",
            )
        ]
    return []


def _check_error(result: TurnResult, reference: ReferenceTurn) -> list[Violation]:
    last = reference.last
    error = result.error
    if last.words is not None and (last.state == TERMINAL or last.reason.startswith("failed:")):
        if not isinstance(error, dict):
            return [
                Violation(
                    "error_verbatim",
                    f"the provider said {last.words}, " f"TurnResult.error is {error!r}",
                )
            ]
        for key, value in last.words.items():
            if error.get(key) != scrub(value):
                return [
                    Violation(
                        "error_verbatim",
                        f"error[{key!r}] is {error.get(key)!r}, the " f"provider said {value!r}",
                    )
                ]
        return []
    if reference.outcome in ("completed", "incomplete", "interrupted") and error is not None:
        return [Violation("error_verbatim", f"outcome {reference.outcome} with error {error!r}")]
    if reference.outcome == "error" and (
        not isinstance(error, dict) or error.get("code") != last.reason
    ):
        return [
            Violation(
                "error_verbatim", f"a transport failure ({last.reason}) reported as {error!r}"
            )
        ]
    return []


def _check_replay(path: str, logged: int) -> list[Violation]:
    try:
        trace = read_trace(path)
    except Exception as error:
        return [Violation("trace_roundtrip", f"the trace does not read back: {error}")]
    if len(trace.records) != logged + 1 or trace.records[-1].get("kind") != "result":
        return [
            Violation(
                "trace_roundtrip",
                f"{len(trace.records)} records read back, "
                f"{logged} logged plus the result written",
            )
        ]
    report = replay_trace(trace)
    if not report.identical:
        assert report.divergence is not None
        return [Violation("replay_identical", report.divergence.describe()[:400])]
    return []
