"""The reference model: what the contract says a turn does with what the world sent it.

Theory of operation
===================

The invariants (`engine.fuzz.invariants`) hold the machines to this model, so it is written from
the contract's rules (shared/CONTRACT.md v1 and v2, the README, the theory of operation in the
machines' docstrings) and takes nothing from the machines but their vocabulary
(`machines.records`). Each rule is stated once, here or in `engine.fuzz.reference_output` (where
content lands, whose call it is, how the result is assembled), as data where it is data, citing
the sentence it implements; so a rule changes in one place (`response.failed` with code
`server_error` retried by every policy is one member of `ALWAYS_RETRIED_FAILURES`).

An attempt's body is read whole, by the WHATWG rules (`reference_events`), and measured against
`max_event_bytes` (`oversized_event`) before its events take effect, so a decoder bug shows too.
An event whose data is not a JSON object is no frame. Then, for one attempt (`ReferenceAttempt`):

- what frames mean: `BEGINS_RESPONSE`, `ENDS_RESPONSE`, `DELIVERED`, `CONTENT`, `ITEM_FRAMES`,
  `CALL_PART_FRAMES`, and any frame whose type names `function_call`; the rest is absorbed;
- where text may be delivered: until a call the client must execute is seen in the attempt;
  while only calls that may still turn out the server's were seen, it is held back and released
  once none is the client's; after a function call nothing is held back. A live attempt is
  `awaiting_created` until the response begins, `tool_call` from a call of the client's until a
  call is finished or taken back with none of the client's left open, else `streaming`;
- what text is (CONTRACT v3, `COMMENTARY_PHASE`): the text of a place whose item was announced or
  finished as `phase: "commentary"` is commentary, on a channel of its own under the same rule
  as answer text; text of an item whose phase is unknown is answer text; refusal text is on its
  own channel and never held back;
- how it ends (`ENDINGS`): each way gives the turn's outcome if nothing more is tried and the
  budget that may pay for another attempt; the attempt is then `fallback` (a broken stream that
  hands over), `terminal` (the server answered) or `retire`. Its reason is data (`Reason`).

The turn (`play_turn`): an HTTP-level failure is tried again while the HTTP budget lasts; an
attempt that ended in `fallback` is followed by one fallback attempt; a background response whose
stream broke after its id and a sequence number came is resumed (the `resume` attempt reads on
from the broken one); a broken stream or a retried failure is tried again while stream attempts
are left; otherwise the turn ends with the last attempt's outcome. Text already delivered is
never delivered again, on any channel (`ReferenceLedger`). `reference_result` assembles the
result.

The turn's wall-clock limit (CONTRACT v3, `turn_timeout_s`) is kept on the sessions' simulated
clock (`engine.fuzz.strategies`: a step comes `STEP_S` after the one before, a stall lasts its
seconds after that, the wait before an HTTP retry passes before the retry's first step): a step
or the end of a silence that would come at or after the limit does not come, the attempt ends
`turn_timeout` instead, and a wait that would reach the limit is not waited: the attempt about
to be sent ends so at once. Only a wait the server demands is known in advance (a back-off's
jitter is the implementation's), so a limit with a back-off to wait is a session the model
does not judge (`UndecidedWait`; the strategies do not make one).

"""

from __future__ import annotations

import codecs
import contextlib
import email.utils
import math
import re
from enum import StrEnum
from typing import Any, Final, Iterable

import attrs

from engine.fuzz.reference_output import (
    ReferenceOutput,
    Slot,
    answer_of,
    call_facts,
    custom_tools_declared,
    join_text,
    json_value,
    listed_calls,
    merged_items,
)
from engine.fuzz.strategies import STEP_S, Server, Session, Step
from machines.records import (
    AttemptKind,
    Chunk,
    EndOfStream,
    Fault,
    HttpError,
    InputKind,
    Outcome,
    Stall,
    TransportFault,
    TurnPolicy,
    TurnTimeout,
)

__all__ = [
    "ALWAYS_RETRIED_FAILURES",
    "UndecidedWait",
    "BROKEN_STREAM",
    "ENDINGS",
    "Budget",
    "ReferenceAttempt",
    "ReferenceLedger",
    "ReferenceResult",
    "ReferenceTurn",
    "Reason",
    "State",
    "oversized_event",
    "play_turn",
    "reference_events",
    "reference_result",
    "reference_turn",
]


class State(StrEnum):
    """The stream-attempt states the contract names (`final_state`, `source`, `dest`)."""

    AWAITING_CREATED = "awaiting_created"
    STREAMING = "streaming"
    TOOL_CALL = "tool_call"
    TERMINAL = "terminal"
    FALLBACK = "fallback"
    RETIRE = "retire"


class Budget(StrEnum):
    """Which retry budget may pay for another attempt."""

    STREAM = "stream"  # `max_stream_retries`
    HTTP = "http"  # `max_http_retries`


# --------------------------------------------------------------------------------------------
# Reading the bytes


def _lines(text: str) -> str:
    """A byte-order mark dropped, every line end (CRLF, LF, CR) one LF."""
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def reference_events(data: bytes, *, ended: bool) -> list[tuple[str, str]]:
    """(event name, data) of every event the bytes dispatch: "an event is dispatched on a blank
    line; an event cut off by the end of the stream is not dispatched" (an unterminated last
    line is no line; `ended` settles nothing more)."""
    events: list[tuple[str, str]] = []
    name, buffer = "", None
    for line in _lines(data.decode("utf-8", "replace")).split("\n")[:-1]:
        if not line:
            if buffer is not None:
                events.append((name or "message", "\n".join(buffer)))
            name, buffer = "", None
            continue
        field, colon, value = line.partition(":")
        value = value[1:] if colon and value.startswith(" ") else value
        if field == "data":
            buffer = [value] if buffer is None else [*buffer, value]
        elif field == "event":
            name = value
    return events


def oversized_event(data: bytes, limit: int) -> int | None:
    """How many events the bytes dispatch before one larger than `limit` bytes ("an SSE event
    larger than max_event_bytes ends the turn"), or None. An event's size is the UTF-8 bytes of
    its lines (line ends counted as one LF), without the line end and blank line that end it; an
    event not ended yet counts with what arrived (a last LF may start its blank line: not
    counted), and a character not yet complete does not count."""
    text = _lines(codecs.getincrementaldecoder("utf-8")("replace").decode(data))
    *blocks, tail = text.split("\n\n")
    dispatched = 0
    for block in [*blocks, tail.removesuffix("\n")]:
        if len(block.encode("utf-8", "surrogatepass")) > limit:
            return dispatched
        dispatched += any(line == "data" or line.startswith("data:") for line in block.split("\n"))
    return None


def frame_type(payload: dict[str, Any], name: str) -> str:
    """A frame's type: its `type`, else "error" for an error envelope, else the event name."""
    kind = payload.get("type")
    if isinstance(kind, str):
        return kind
    return "error" if isinstance(payload.get("error"), dict) else name


# --------------------------------------------------------------------------------------------
# What frames mean (README "What the machines handle"; the states of machines/stream_attempt.py)

#: "`response.created` moves on; so does `response.in_progress` (relays that never send
#: `created`) and any content frame (relays that send neither)"; both carry the response object.
LIFECYCLE: Final = frozenset({"response.created", "response.in_progress"})
#: "on_text_delta: answer text", "on_reasoning_delta: reasoning / reasoning-summary text",
#: v3 "Refusal deltas go to on_refusal_delta (never to on_text_delta)".
DELIVERED: Final[dict[str, str]] = {
    "response.output_text.delta": "text",
    "response.reasoning_summary_text.delta": "reasoning",
    "response.reasoning_text.delta": "reasoning",
    "response.refusal.delta": "refusal",
}
BEGINS_RESPONSE: Final = LIFECYCLE | frozenset(DELIVERED)

#: "terminal: the server ended the response (`response.completed`, `.incomplete`, `.failed`),
#: sent an `error` frame"; the cause each one is (a key of `ENDINGS`).
ENDS_RESPONSE: Final[dict[str, str]] = {
    "response.completed": "completed",
    "response.incomplete": "incomplete",
    "response.failed": "failed",
    "error": "error_frame",
}

_PART, _CMD = "content_index", "command_index"
#: Where each content frame's text lands (`reference_output.Slot`: item kind, field, how, what a
#: field that is not a string does, part index).
CONTENT: Final[dict[str, Slot]] = {
    "response.output_text.delta": Slot("message", "delta", "append", part=_PART),
    "response.output_text.done": Slot("message", "text", "replace", part=_PART),
    "response.refusal.delta": Slot("message", "delta", "append", part=_PART, holds="refusal"),
    "response.refusal.done": Slot("message", "refusal", "replace", part=_PART, holds="refusal"),
    "response.reasoning_summary_text.delta": Slot("reasoning", "delta", "append"),
    "response.reasoning_text.delta": Slot("reasoning", "delta", "append"),
    "response.function_call_arguments.delta": Slot("function_call", "delta", "append"),
    "response.function_call_arguments.done": Slot("function_call", "arguments", "done"),
    "response.custom_tool_call_input.delta": Slot("custom_tool_call", "delta", "append", "empty"),
    "response.custom_tool_call_input.done": Slot("custom_tool_call", "input", "done", "touch"),
    "response.shell_call_command.added": Slot("shell_call", "command", "replace", "empty", _CMD),
    "response.shell_call_command.delta": Slot("shell_call", "delta", "append", "empty", _CMD),
    "response.shell_call_command.done": Slot("shell_call", "command", "replace", "touch", _CMD),
}

#: CONTRACT v3: "A message's phase is known from its output_item.added (or .done); text of an
#: item whose phase is unknown is answer text": the `phase` that makes an item's text commentary
#: (a phase is stated by a `phase` that is not null; a later statement replaces an earlier one,
#: and a value that is not this string is no commentary).
COMMENTARY_PHASE: Final = "commentary"

#: An item announced (False) or finished (True): a call of the client's is a call seen, any
#: other item is content.
ITEM_FRAMES: Final[dict[str, bool]] = {
    "response.output_item.added": False,
    "response.output_item.done": True,
}

#: Frames that stream part of the call at their place: "a client call's item, argument, input
#: and command frames" (the function call's frames are the `*function_call*` rule's).
CALL_PART_FRAMES: Final = frozenset(
    kind for kind, slot in CONTENT.items() if slot.kind in ("custom_tool_call", "shell_call")
)

# --------------------------------------------------------------------------------------------
# How an attempt ends (CONTRACT v1 TurnPolicy; v2 HTTP-level retries, limits, resuming)

#: "drops, read timeouts, idle stalls and clean EOFs without a terminal event (retried, then one
#: create(stream=True) fallback)"; in a background response, what a resume continues.
BROKEN_STREAM: Final = frozenset(
    {Fault.DROP, Fault.READ_TIMEOUT, InputKind.IDLE_TIMEOUT, InputKind.EOF}
)
#: "408, 409, 429, 5xx and connection errors before the first body byte are retried".
RETRYABLE_STATUSES: Final = frozenset({408, 409, 429, *range(500, 600)})
#: `response.failed` codes retried whatever the policy's `retry_failed_codes` say.
ALWAYS_RETRIED_FAILURES: Final[frozenset[str]] = frozenset()


@attrs.frozen(slots=True)
class Consequence:
    """What one way of ending means: the turn's outcome if nothing more is tried, the budget
    that may pay for another attempt, and whether the server answered."""

    outcome: Outcome
    budget: Budget | None = None
    answered: bool = False


#: Every way an attempt ends, by cause.
ENDINGS: Final[dict[str, Consequence]] = {
    # "response.incomplete and response.failed as outcomes, not retries, unless the code is
    # retryable"
    "completed": Consequence("completed", answered=True),
    "incomplete": Consequence("incomplete", answered=True),
    "failed": Consequence("failed", answered=True),
    "failed_retried": Consequence("failed", Budget.STREAM),
    "error_frame": Consequence("error", answered=True),
    # "a demanded wait longer than max_retry_wait_s ends the turn with that HTTP error", as does
    # a spent HTTP budget
    InputKind.HTTP_ERROR: Consequence("error", answered=True),
    "http_retried": Consequence("error", Budget.HTTP),
    # "If the resume is refused (HTTP 404/4xx) ... the turn falls back to the ordinary retry rules"
    "resume_refused": Consequence("error", Budget.STREAM),
    Fault.CONNECT_ERROR: Consequence("error", Budget.HTTP),
    **{fault: Consequence("error", Budget.STREAM) for fault in BROKEN_STREAM},
    # "event_too_large; no retry, no fallback, partial output kept"
    InputKind.EVENT_TOO_LARGE: Consequence("error"),
    # "turn_timeout_s: past it the turn ends at once with outcome "error", reason turn_timeout,
    # partial output kept"
    InputKind.TURN_TIMEOUT: Consequence("error"),
    InputKind.INTERRUPT: Consequence("interrupted"),
}

#: How `Attempt.reason` writes a reason, where it is not the cause's own name.
_SPELLING: Final[dict[str, str]] = {
    "failed_retried": "failed:{code}",
    InputKind.HTTP_ERROR: "http_{status}",
    "http_retried": "http_{status}",
    "resume_refused": "resume_refused:{status}",
    InputKind.INTERRUPT: "interrupted",
}


@attrs.frozen(slots=True)
class Reason:
    """Why an attempt ended, as data: its cause (a key of `ENDINGS`), the HTTP status or the
    failure code it names. `str()` writes it as `Attempt.reason` does."""

    cause: str
    status: int | None = None
    code: Any = None

    def __str__(self) -> str:
        template = _SPELLING.get(self.cause)
        return template.format(status=self.status, code=self.code) if template else self.cause


@attrs.frozen(slots=True)
class Ending:
    """How an attempt ended: its final state, reason, and what that means for the turn."""

    state: State
    reason: Reason
    then: Consequence


def failure_is_retried(code: Any, policy: TurnPolicy) -> bool:
    """"retry_failed_codes: response.failed codes treated as retryable faults"."""
    return isinstance(code, str) and code in policy.retry_failed_codes | ALWAYS_RETRIED_FAILURES


def resume_is_refused(kind: AttemptKind, status: int) -> bool:
    """"If the resume is refused (HTTP 404/4xx)": a 4xx that asking again cannot heal."""
    return kind == "resume" and 400 <= status < 500 and status not in RETRYABLE_STATUSES


_TRY_AGAIN: Final = re.compile(r"try again in (\d+(?:\.\d+)?)\s*(ms|s|sec|seconds?)\b", re.I)


def demanded_wait(step: HttpError) -> float | None:
    """"retry-after-ms wins over Retry-After (seconds or an HTTP date, from when the answer
    came), which wins over 'try again in N s' in the body"; None when none says a usable wait."""
    for header, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        text = step.header(header)
        if text is None:
            continue
        try:
            seconds = float(text) / scale
        except ValueError:
            seconds = math.nan
            with contextlib.suppress(TypeError, ValueError, IndexError):
                when = email.utils.parsedate_to_datetime(text) if scale == 1.0 else None
                if when is not None and when.tzinfo is not None and step.received_at is not None:
                    seconds = max(0.0, when.timestamp() - step.received_at)
        # "A demanded wait too large to represent (Retry-After of hundreds of digits) is longer
        # than max_retry_wait_s": infinity is a wait, not a value that says nothing
        if seconds >= 0:
            return seconds
    message = http_words(step)["message"]
    found = _TRY_AGAIN.search(message) if isinstance(message, str) else None
    if found is None:
        return None
    return float(found.group(1)) / (1000 if found.group(2).lower() == "ms" else 1)


def http_words(step: HttpError) -> dict[str, Any]:
    """The provider's words of an HTTP error, verbatim: its error envelope's, a bare message
    object's, else the body's text or the status."""
    body = step.body
    source = body.get("error") if isinstance(body, dict) else None
    if not isinstance(source, dict):
        source = body if isinstance(body, dict) and "message" in body else None
    if source is not None:
        return {"message": source.get("message"), "code": source.get("code"), "status": step.status}
    text = body if isinstance(body, str) and body else f"HTTP {step.status}"
    return {"message": text, "code": None, "status": step.status}


# --------------------------------------------------------------------------------------------
# One attempt


class ReferenceLedger:
    """What reached the user this turn, per channel; `shown`: the answer text and the commentary
    in the order delivered (what `on_text_delta` got without a commentary callback), and the
    commentary delivered as (place of its message, text) runs."""

    def __init__(self) -> None:
        self.text = ""
        self.reasoning = ""
        self.commentary = ""
        self.refusal = ""
        self.shown = ""
        self.commentary_runs: list[tuple[int, str]] = []

    def note_commentary(self, place: int, piece: str) -> None:
        self.commentary += piece
        self.shown += piece
        runs = self.commentary_runs
        if runs and runs[-1][0] == place:
            runs[-1] = (place, runs[-1][1] + piece)
        else:
            runs.append((place, piece))


class _Delivery:
    """One response's delivery on one channel: "Text already delivered to a callback is never
    delivered again": repeat what was delivered, then deliver the rest; a retry that says
    something else delivers nothing."""

    def __init__(self, behind: str) -> None:
        self.behind = behind
        self.said = ""
        self.off = False

    def take(self, delta: str) -> str:
        """The part of `delta` that is new to the user."""
        if self.off:
            return ""
        before, shown = len(self.said), len(self.behind)
        self.said += delta
        self.off = self.said[:shown] != self.behind[: len(self.said)]
        return "" if self.off else self.said[max(before, shown) :]


@attrs.define(slots=True)
class _Read:
    """What one response has shown so far; a resume reads on from it."""

    text: _Delivery
    reasoning: _Delivery
    commentary: _Delivery
    refusal: _Delivery
    state: State = State.AWAITING_CREATED
    output: ReferenceOutput = attrs.Factory(ReferenceOutput)
    client_calls: set[int] = attrs.Factory(set)  # places counted as the client's calls
    function_call: bool = False  # a function call frame came: it is never taken back
    withholding: bool = False  # answer text is not delivered now
    withheld: list[tuple[int | None, str]] = attrs.Factory(list)  # (commentary place, text)
    commentary_places: set[int] = attrs.Factory(set)  # places whose item is commentary
    tools: Any = None  # the latest `tools` list of a lifecycle frame that names tools
    response_id: str | None = None
    last_sequence: int | None = None
    allowed_text: str = ""  # answer text let through (delivered, or held back and released)
    allowed_commentary: str = ""  # the same, of commentary
    reasoning_text: str = ""
    refusal_text: str = ""


class ReferenceAttempt:
    """One attempt by the contract's rules: `event(name, data)` for each dispatched event, then
    `end(step)` for the step that ended the body (or `too_large()`). `state`, `reason`, `words`
    and what was delivered are what the invariants compare with.

    `hands_over`: a broken stream ends this attempt in `fallback`; `http_left`: the HTTP budget
    allows another request; `tracks_sequence`: a background response (its id and sequence
    numbers are followed); `resumes`: the attempt whose response this one continues."""

    def __init__(
        self,
        number: int,
        kind: AttemptKind,
        *,
        ledger: ReferenceLedger,
        policy: TurnPolicy = TurnPolicy(),
        hands_over: bool = False,
        http_left: bool = False,
        tracks_sequence: bool = False,
        resumes: ReferenceAttempt | None = None,
    ) -> None:
        self.number, self.kind, self.ledger, self.policy = number, kind, ledger, policy
        self.hands_over, self.http_left = hands_over, http_left
        self.tracks_sequence = tracks_sequence or resumes is not None
        self.ending: Ending | None = None
        self.response: dict[str, Any] | None = None  # the terminal frame's response
        self.words: dict[str, Any] | None = None  # the provider's error words
        self.delivered_text: list[str] = []
        self.delivered_reasoning: list[str] = []
        self.delivered_commentary: list[str] = []
        self.delivered_refusal: list[str] = []
        self.resume_point: tuple[str, int] | None = None
        #: the wait the HTTP error that ended the attempt demanded (None: none, or no error)
        self.demanded: float | None = None
        if resumes is None:
            self.read = _Read(_Delivery(ledger.text), _Delivery(ledger.reasoning),
                              _Delivery(ledger.commentary), _Delivery(ledger.refusal))
            return
        old = resumes.read
        assert old.response_id is not None and old.last_sequence is not None
        self.read = attrs.evolve(old, client_calls=set(old.client_calls), withheld=[*old.withheld],
                                 commentary_places=set(old.commentary_places))
        self.resume_point = (old.response_id, old.last_sequence)

    @property
    def state(self) -> State:
        return self.ending.state if self.ending is not None else self.read.state

    @property
    def reason(self) -> Reason | None:
        return self.ending.reason if self.ending is not None else None

    def declared_tools(self) -> Any:
        """The `tools` that judge this attempt's custom tool calls: the terminal response's when
        they name tools, else the latest a lifecycle frame carried."""
        tools = self.response.get("tools") if self.response else None
        return tools if custom_tools_declared(tools) is not None else self.read.tools

    def items(self) -> list[dict[str, Any]]:
        """What the attempt's response streamed, as output items."""
        completed = self.reason is not None and self.reason.cause == "completed"
        return self.read.output.items("completed" if completed else "incomplete")

    # -- frames ----------------------------------------------------------------------------------
    def event(self, name: str, data: str) -> None:
        """One dispatched SSE event; ignored once the attempt has ended."""
        if self.ending is not None:
            return
        payload = json_value(data)
        if not isinstance(payload, dict) or (self.tracks_sequence and self._already_seen(payload)):
            return
        kind = frame_type(payload, name)
        channel = DELIVERED.get(kind)
        delta = payload.get("delta")
        if channel is not None and not isinstance(delta, str):
            return  # "a text delta whose delta is not a string is ignored"
        if kind in ENDS_RESPONSE:
            self._server_ended(ENDS_RESPONSE[kind], payload)
            return
        read = self.read
        if kind in BEGINS_RESPONSE:
            self._begin()
        if kind in LIFECYCLE:
            self._lifecycle(payload.get("response"))
        slot = CONTENT.get(kind)
        index = read.output.land(slot, payload) if slot is not None else None
        if kind in ITEM_FRAMES:
            self._item(payload.get("item"), payload, done=ITEM_FRAMES[kind])
        elif kind in CALL_PART_FRAMES and index is not None:
            self._call_part(index)
        elif "function_call" in kind:
            read.function_call = True
            self._call_seen()
        if channel == "text" and delta:
            self._text(delta, index if index in read.commentary_places else None)
        elif channel == "reasoning" and delta:
            read.reasoning_text += delta
            if piece := read.reasoning.take(delta):
                self.ledger.reasoning += piece
                self.delivered_reasoning.append(piece)
        elif channel == "refusal" and delta:  # never held back: a refusal is no answer text
            read.refusal_text += delta
            if piece := read.refusal.take(delta):
                self.ledger.refusal += piece
                self.delivered_refusal.append(piece)

    def _already_seen(self, payload: dict[str, Any]) -> bool:
        """"an event whose sequence_number is not above the last one seen is ignored" (a
        background response's)."""
        number = payload.get("sequence_number")
        if type(number) is not int:
            return False
        last = self.read.last_sequence
        if last is not None and number <= last:
            return True
        self.read.last_sequence = number
        return False

    def _lifecycle(self, response: Any) -> None:
        """The response object: a background response's id ("once response.created gave the
        response's id"), and the `tools` that judge custom tool calls from now on."""
        read = self.read
        if not isinstance(response, dict):
            return
        rid = response.get("id")
        if self.tracks_sequence and read.response_id is None and type(rid) is str and rid:
            read.response_id = rid
        custom = custom_tools_declared(response.get("tools"))
        if custom is None:  # a list that names no tool rules nothing out
            return
        read.tools = response["tools"]
        if custom != read.output.judge.custom_tools:
            read.output.judge.custom_tools = custom
            self._judge_again()

    def _item(self, item: Any, payload: dict[str, Any], *, done: bool) -> None:
        """An item announced or finished: a call of the client's is a call seen (a finished one
        may settle the calls), any other item is content."""
        if not isinstance(item, dict):
            if not done:
                self._begin()
            return
        read = self.read
        index, moves = read.output.item(payload, item, done=done)
        for source, dest in moves:  # what was known of a place is known where it went
            for places in (read.client_calls, read.commentary_places):
                if source in places:
                    places.discard(source)
                    places.add(dest)
        phase = item.get("phase")
        if phase is not None:
            if phase == COMMENTARY_PHASE:
                read.commentary_places.add(index)
            else:
                read.commentary_places.discard(index)
        facts = call_facts(item)
        if facts is not None and read.output.judge.is_clients(facts):
            read.function_call |= facts[0] == "function_call"
            read.client_calls.add(index)
            self._call_seen()
            if done:
                self._settle()
        else:
            self._begin()
        self._take_back()

    def _call_part(self, index: int) -> None:
        """A frame streaming part of the call at `index`: the client's unless that call is known
        to be the server's (a frame at a place whose item is no call counts as the client's)."""
        read = self.read
        if index not in read.client_calls:
            facts = read.output.facts(index)
            if facts is not None and not read.output.judge.is_clients(facts):
                self._begin()
                return
            read.client_calls.add(index)
        self._call_seen()

    # -- where text may be delivered -------------------------------------------------------------
    def _begin(self) -> None:
        if self.read.state == State.AWAITING_CREATED:
            self.read.state = State.STREAMING

    def _call_seen(self) -> None:
        """"on_text_delta: answer text, never after a tool call was seen in that attempt"."""
        if self.read.state != State.TOOL_CALL:
            self.read.state = State.TOOL_CALL
            self.read.withholding = True

    def _settle(self) -> None:
        read = self.read
        if read.state == State.TOOL_CALL and read.output.every_clients_call_finished():
            read.state = State.STREAMING

    def _judge_again(self) -> None:
        """A `tools` list changed whose custom tool calls are: the calls seen are judged again
        (those now the client's are a call seen, those now the server's are taken back)."""
        read = self.read
        judge = read.output.judge
        joined = [i for i, facts in read.output.calls()
                  if i not in read.client_calls and judge.is_clients(facts)]
        if joined:
            read.client_calls.update(joined)
            self._call_seen()
            self._settle()
        self._take_back()

    def _take_back(self) -> None:
        """Calls counted as the client's that now show they are the server's are taken back
        ("calls the server ran itself ... hold back no text"); with none of the client's left,
        the text held back is delivered and text flows again."""
        read = self.read
        judge = read.output.judge
        withdrawn = {i for i in read.client_calls
                     if (facts := read.output.facts(i)) is not None and not judge.is_clients(facts)}
        if not withdrawn:
            return
        read.client_calls -= withdrawn
        if read.client_calls or read.function_call:
            self._settle()
            return
        read.state, read.withholding = State.STREAMING, False
        held, read.withheld = read.withheld, []
        for place, delta in held:
            self._text(delta, place)

    def _text(self, delta: str, commentary_place: int | None) -> None:
        """Answer text, or the text of the commentary message at `commentary_place`: each on its
        own channel, both held back after a call."""
        read = self.read
        if read.withholding:
            if not read.function_call:  # the calls seen may still turn out the server's
                read.withheld.append((commentary_place, delta))
            return
        ledger = self.ledger
        if commentary_place is not None:
            read.allowed_commentary += delta
            if piece := read.commentary.take(delta):
                ledger.note_commentary(commentary_place, piece)
                self.delivered_commentary.append(piece)
            return
        read.allowed_text += delta
        if piece := read.text.take(delta):
            ledger.text += piece
            ledger.shown += piece
            self.delivered_text.append(piece)

    # -- how it ends -----------------------------------------------------------------------------
    def _server_ended(self, cause: str, payload: dict[str, Any]) -> None:
        """The server ended the response, with "the provider's words verbatim" for a failure
        (`response.error`) or an `error` frame (top-level or nested envelope)."""
        if cause == "error_frame":
            nested = payload.get("error")
            words = nested if isinstance(nested, dict) else payload
        else:
            response = payload.get("response")
            self.response = response if isinstance(response, dict) else {}
            error = self.response.get("error")
            words = error if isinstance(error, dict) else {}
        if cause in ("error_frame", "failed"):
            self.words = {"message": words.get("message"), "code": words.get("code")}
        if cause == "failed" and failure_is_retried(words.get("code"), self.policy):
            self._end(Reason("failed_retried", code=words.get("code")))
        else:
            self._end(Reason(cause))

    def too_large(self) -> None:
        """An event passed the policy's `max_event_bytes`."""
        if self.ending is None:
            self._end(Reason(InputKind.EVENT_TOO_LARGE))

    def end(self, step: Step | TurnTimeout) -> None:
        """The step that ended the body; ignored once the attempt has ended. A `Stall` given
        here is one past the policy's idle timeout."""
        if self.ending is not None:
            return
        if isinstance(step, HttpError):
            self.words = http_words(step)
            wait = self.demanded = demanded_wait(step)
            if resume_is_refused(self.kind, step.status):
                cause = "resume_refused"
            elif (step.status in RETRYABLE_STATUSES and self.http_left
                  and (wait is None or (math.isfinite(wait)
                                        and wait <= self.policy.max_retry_wait_s))):
                cause = "http_retried"
            else:
                cause = InputKind.HTTP_ERROR
            self._end(Reason(cause, status=step.status))
        elif isinstance(step, TransportFault):
            self._end(Reason(step.kind))
        else:
            self._end(Reason(InputKind.IDLE_TIMEOUT if isinstance(step, Stall) else step.KIND))

    def _end(self, reason: Reason) -> None:
        then = ENDINGS[reason.cause]
        if then.budget is Budget.HTTP and not self.http_left:  # "while the budget lasts"
            then = attrs.evolve(then, budget=None)
        if then.budget is Budget.STREAM and self.hands_over:
            state = State.FALLBACK
        else:
            state = State.TERMINAL if then.answered else State.RETIRE
        self.ending = Ending(state, reason, then)


# --------------------------------------------------------------------------------------------
# The turn


@attrs.frozen
class ReferenceTurn:
    """What the reference model says a turn does: its attempts, in order, and its outcome."""

    attempts: list[ReferenceAttempt]

    @property
    def last(self) -> ReferenceAttempt:
        """The attempt that ended the turn."""
        return self.attempts[-1]

    @property
    def outcome(self) -> Outcome:
        """"the last attempt's outcome": what its ending means when nothing more is tried."""
        ending = self.last.ending
        assert ending is not None
        return ending.then.outcome


def _play(attempt: ReferenceAttempt, script: Iterable[Step], policy: TurnPolicy) -> None:
    """Read the body the script sends until the step that ends it (a stall past the idle
    timeout included), then let its events and that step take effect."""
    received = bytearray()
    ending: Step = EndOfStream()
    for step in script:
        if isinstance(step, Chunk):
            received += step.data
        elif not isinstance(step, Stall) or (
            policy.idle_timeout_s is not None and step.seconds >= policy.idle_timeout_s
        ):
            ending = step
            break
    data = bytes(received)
    events = reference_events(data, ended=isinstance(ending, EndOfStream))
    too_large = (  # invalid UTF-8 grows up to three times when decoded
        oversized_event(data, policy.max_event_bytes)
        if 3 * len(data) > policy.max_event_bytes
        else None
    )
    for name, payload in events[:too_large]:
        attempt.event(name, payload)
        if attempt.ending is not None:
            return
    if too_large is not None:
        attempt.too_large()
    else:
        attempt.end(ending)


class UndecidedWait(ValueError):
    """A session the reference model does not judge: a back-off to wait before an HTTP retry
    under the turn's limit (whether the wait reaches the limit depends on the jitter)."""


class _Clock:
    """The sessions' simulated clock and the turn's limit on it (see the module docstring):
    every reading rounded to microseconds, as a driver's clock readings are."""

    def __init__(self, limit: float) -> None:
        self.now = 0.0
        self.limit = limit

    def reaches(self, seconds: float) -> bool:
        """Whether `seconds` from now comes at or after the limit (the clock then reads it)."""
        if round(self.now + seconds, 6) >= self.limit:
            self.now = max(self.now, self.limit)
            return True
        self.now = round(self.now + seconds, 6)
        return False


def _play_timed(
    attempt: ReferenceAttempt, script: Iterable[Step], policy: TurnPolicy, clock: _Clock
) -> None:
    """`_play` against the turn's limit: the bytes take effect as they come, so that the clock
    stops where the attempt ended (its events may end it before the limit comes)."""
    received = bytearray()
    fed = 0
    limit = policy.max_event_bytes

    def take_in() -> bool:
        """Let the events that arrived take effect; True once the attempt has ended."""
        nonlocal fed
        data = bytes(received)
        events = reference_events(data, ended=False)
        too_large = oversized_event(data, limit) if 3 * len(data) > limit else None
        for name, payload in events[fed:too_large]:
            attempt.event(name, payload)
            if attempt.ending is not None:
                return True
        fed = len(events)
        if too_large is not None:
            attempt.too_large()
            return True
        return False

    for step in script:
        if clock.reaches(STEP_S):
            attempt.end(TurnTimeout(clock.limit))
            return
        if isinstance(step, Chunk):
            received += step.data
            if take_in():
                return
            continue
        if isinstance(step, Stall):
            idle = policy.idle_timeout_s
            idles = idle is not None and step.seconds >= idle
            if clock.reaches(idle if idle is not None and idles else step.seconds):
                attempt.end(TurnTimeout(clock.limit))
                return
            if not idles:
                continue
        attempt.end(step)
        return
    if clock.reaches(STEP_S):
        attempt.end(TurnTimeout(clock.limit))
    else:
        attempt.end(EndOfStream())


def play_turn(policy: TurnPolicy, server: Server, *, background: bool = False) -> ReferenceTurn:
    """The attempts the contract makes a turn take with this server, and how each ends."""
    ledger = ReferenceLedger()
    most = 1 + policy.max_stream_retries
    attempts: list[ReferenceAttempt] = []
    kind: AttemptKind = "stream"
    stream_tries = 1
    http_retries = 0
    clock = _Clock(policy.turn_timeout_s) if policy.turn_timeout_s is not None else None
    wait = 0.0
    while True:
        attempt = ReferenceAttempt(
            len(attempts) + 1,
            kind,
            ledger=ledger,
            policy=policy,
            # "fallback: after the last stream attempt: one create(stream=True) attempt"
            hands_over=kind != "fallback" and policy.fallback and stream_tries == most,
            http_left=http_retries < (policy.max_http_retries or 0),
            tracks_sequence=background,
            resumes=attempts[-1] if kind == "resume" else None,
        )
        attempts.append(attempt)
        script = server(attempt.number, kind, attempt.resume_point)
        if clock is None:
            _play(attempt, script, policy)
        elif clock.reaches(wait):  # "a wait that would pass the deadline ends the turn at once"
            attempt.end(TurnTimeout(clock.limit))
        else:
            _play_timed(attempt, script, policy, clock)
        ending = attempt.ending
        assert ending is not None
        read = attempt.read
        wait = 0.0
        if ending.then.budget is Budget.HTTP:  # the same request again
            http_retries += 1
            if clock is not None:
                wait = _retry_wait(attempt)
        elif ending.state == State.FALLBACK:
            kind = "fallback"
        elif kind == "fallback" or stream_tries == most or ending.then.budget is not Budget.STREAM:
            return ReferenceTurn(attempts)
        else:
            # "When such a stream breaks (drop, read or idle timeout, EOF without a terminal
            # event) after response.created gave its id, the next attempt resumes it"
            resumable = background and policy.resume and ending.reason.cause in BROKEN_STREAM
            known = read.response_id is not None and read.last_sequence is not None
            kind = "resume" if resumable and known else "stream"
            stream_tries += 1


def _retry_wait(attempt: ReferenceAttempt) -> float:
    """The wait before the HTTP retry after `attempt`: "The wait before a retry honours
    retry-after-ms, Retry-After ... else exponential backoff with jitter" (only the first is
    known in advance)."""
    wait = attempt.demanded
    if wait is None:
        raise UndecidedWait(
            f"attempt {attempt.number}: a back-off before the retry, under a turn limit"
        )
    return wait


def reference_turn(session: Session) -> ReferenceTurn:
    """What the contract says the turn does with a session (`engine.strategies.Session`)."""
    return play_turn(session.policy, session.server)


@attrs.frozen
class ReferenceResult:
    """The parts of a `TurnResult` the reference model gives."""

    output_text: str
    tool_calls: list[dict[str, Any]]
    answer_text: str
    commentary: list[str]
    refusal: str | None


def reference_result(reference: ReferenceTurn) -> ReferenceResult:
    """The text and `tool_calls` the contract gives the turn: "output backfilled when the
    server sent it empty or null" — from the last attempt's terminal response when it has one
    (its output when a non-empty list, with every streamed call it left out), else from what the
    latest attempt that streamed anything streamed; "output_text on error or interrupted is never
    shorter than the text already delivered" (to `on_text_delta`, which without a commentary
    callback got the commentary too), and none of the v3 parts holds less than was delivered on
    its channel either."""
    last = reference.last
    completed = reference.outcome == "completed"
    if last.response:
        streamed = last.items()
        output = last.response.get("output")
        items: list[Any] = output if isinstance(output, list) and output else streamed
        items_and_calls = merged_items(items, streamed)
        calls = listed_calls(items_and_calls, last.declared_tools(), completed=completed)
    else:
        source = next((a for a in reversed(reference.attempts) if not a.read.output.empty), last)
        items = source.items()
        calls = listed_calls(items, source.declared_tools(), completed=completed)
    text = join_text(items)
    answer, commentary, refusal = answer_of(items)
    ledger = last.ledger
    if reference.outcome in ("error", "interrupted"):
        if len(text) < len(ledger.shown):
            text = ledger.shown
        if len(answer) < len(ledger.text):
            answer = ledger.text
        if len("".join(commentary)) < len(ledger.commentary):
            commentary = [run for _, run in ledger.commentary_runs]
        if len(refusal or "") < len(ledger.refusal):
            refusal = ledger.refusal
    return ReferenceResult(text, calls, answer, commentary, refusal)
