"""The stream-attempt machine: one HTTP request's worth of Responses-API server-sent events.

Theory of operation
===================

A turn makes one or more *attempts*; each attempt is one request whose body is an SSE stream.
This machine is fed, in order, everything the driver observed for that request, as records from
`machines.records`: dispatched `SseEvent`s, an `HttpError` status, a `TransportFault`, a clean
`EndOfStream`, an `IdleTimeout`, a `TurnTimeout`, an `Interrupt`. It never reads a socket, a
clock or a flag, and it never calls anyone: `receive(input)` returns the machine's *decisions*, a
list of `Transition` and `Effect` records, and the caller (the engine's event log) records them
and then acts on them (callbacks, log lines). That is why a recorded attempt replays exactly, and why a test of a rule
is one `receive()` and an assert:

    attempt = StreamAttempt(1, "stream", ledger=DeliveryLedger())
    attempt.receive(SseEvent("message", '{"type":"response.created","response":{}}'))
    # -> [Transition("stream_attempt", 1, "awaiting_created", "streaming", "created")]

States (`State`) and every rule between them are the rows of `TABLE` below, the only place they
are written; `streamfsm diagram` draws them, guards included:

    awaiting_created   request sent, no lifecycle frame yet. Prelude frames are absorbed here, in
                       the same request: `response.queued`, `codex.rate_limits` (payload kept as a
                       `rate_limits` effect), unknown names, keepalives, `[DONE]`, bad JSON.
                       `response.created` moves on; so does `response.in_progress` (relays that
                       never send `created`) and any content frame (relays that send neither).
    streaming          answer text flows. Each `response.output_text.delta` is delivered to the
                       user (effect `text_delta`, `first_delta` before the turn's very first one;
                       `commentary_delta` for a commentary message, below) unless a tool call was
                       seen in this attempt; reasoning deltas are delivered as `reasoning_delta`,
                       refusal deltas as `refusal_delta`. Everything is also kept in an
                       `OutputAssembly`.
    tool_call          a call the client must execute is being streamed: a function call, a
                       custom tool call, a local shell, shell or apply_patch call (its
                       `output_item.added`, its argument or input deltas, a shell call's command
                       frames, or any `*function_call*` frame). Entering this state stops the
                       delivery of answer text for the rest of the attempt (it is still kept).
                       When every open client call has its `output_item.done`, the machine returns
                       to `streaming`.
    terminal           final: the server ended the response (`response.completed`, `.incomplete`,
                       `.failed`), sent an `error` frame (the provider's words kept verbatim), or
                       answered the request with an HTTP error status. The turn ends with it.
    fallback           final: the byte stream failed (a retryable fault) on the last stream attempt
                       of a turn whose policy allows a fallback; the turn continues with one
                       `create(stream=True)` attempt.
    retire             final: the attempt is abandoned: a retryable fault (the turn retries while
                       stream attempts are left, else it ends "error"), an interrupt (the turn
                       ends "interrupted", promptly), or the turn's wall-clock limit
                       (`turn_timeout`: the turn ends "error" at once, nothing retried).

Reading a row (`machines.table`): `Row(Fault.DROP, LIVE, State.FALLBACK,
guards=hands_over_to_fallback, decides=EndingRule("error", "stream"))` says: a dropped connection,
in any live state, when this attempt hands over to the fallback, ends the attempt in `fallback`; if
the turn has nothing left to try, its outcome is "error"; the stream budget may pay for another
attempt. Rows are tried in order; the first whose guards hold fires. A row without `dest` is a
*stay*: the trigger is valid there and changes nothing. A trigger with no row for the current
state raises `transitions.MachineError`: an impossible transition is a bug, never silently
dropped. A final row decides how the attempt ends (`EndingRule`): the turn's `outcome` if this
attempt is its last, which budget may pay for a `retry`, and the `reason` as data (a
`ReasonCode`, or the trigger itself, with the attempt's details: the HTTP `status`, the
`failure_code` of a retryable `response.failed`). The turn reads that record; nothing parses a
reason string.

A worked example: to make `response.failed` with code `server_error` always retryable (without
`TurnPolicy.retry_failed_codes`), give the two retryable `failed` rows a new guard in place of
`failure_is_retryable`, say `failure_is_transient` (`return attempt.error_code in
attempt.retry_failed_codes | {"server_error"}`), and change the test of those rows
(tests/test_stream_attempt.py). Nothing else in the machines decides it.

Frames and triggers: `_HANDLERS` maps a frame's `type` to its handler, which keeps the frame's
content and fires one named trigger: `response.created` fires `created`, `.in_progress`
`in_progress`, text and reasoning deltas and non-call items fire `content`, the text and the item
frames of a commentary message fire `commentary`, refusal deltas fire `refusal`, a client call's
item, argument, input and command frames and any other `*function_call*` frame fire
`tool_call_started` (a finished call also fires `tool_calls_done`), the terminal frames fire
`completed` / `incomplete` / `failed`, an `error` frame `error_frame`. Other names fire nothing
(they are counted as ignored), and so do the `*.done` frames of text and refusals (their full
text is kept).

What an answer is made of (contract v3): a message's text is answer text, commentary or a
refusal, each delivered on a channel of its own.

- A message labelled `phase: "commentary"` (a preamble before tool calls) is commentary. Its phase
  is learned from the `phase` of its `output_item.added`, or of its `output_item.done` (a phase
  that is null or absent says nothing; a later one replaces an earlier one; anything but the
  string "commentary" is no commentary, and no value of any type raises). The machine keeps the
  output indices of the commentary items (`commentary_items`), so deltas are matched to their
  item by place: by `output_index`, else by the `item_id` the item was announced or first
  streamed with (`machines.output`), which also serves relays that omit `output_item.added` and
  relays that give the same item a new `item_id` mid-stream while its `output_index` stays.
- Text of an item whose phase is not known (yet) is answer text: a relay that states the phase
  only with `output_item.done` has its message delivered as answer text while it streams (there
  is nothing else to go by then); the result, built from the finished items, still files it as
  commentary. Commentary deltas are effects `commentary_delta`, held back after a client call
  exactly as answer text is (without a commentary callback they reach `on_text_delta`, whose rule
  that is).
- The first delta: `first_delta` comes before the turn's first delivered text. Whether that is a
  commentary delta depends on whether the caller routes commentary to `on_text_delta`, which the
  machine never knows (the event log does): so before the first commentary delta, when no answer
  text came yet, it is `first_delta` with data "commentary_joined"; before the first answer delta
  after commentary, "commentary_apart"; before a first answer delta with no commentary before it,
  None (first either way).
- Refusals: `response.refusal.delta` deltas are delivered as `refusal_delta` whatever calls were
  seen (a refusal is no answer text), `response.refusal.done` replaces the part's text. Both land
  in their message as `refusal` content parts; a delta or refusal text that is not a string is
  ignored.

Whose call it is: `machines.output` holds the classification as data (`CLIENT_CALL_TYPES`,
`HOSTED_CALL_TYPES`, `OUTPUT_ITEM_TYPES`, `is_client_call`); the machine applies it to what the
attempt has seen so far. A function call is always the client's. A custom tool call is the
server's when the `tools` of the response object in `response.created` / `.in_progress` name tools
but no `custom` tool of its name (xAI's server-side searches); its frames then fire `content`. A
shell, local shell or apply_patch call counts as the client's until an output item for its call_id
(`<type>_output`) shows the server ran it. When a call counted as the client's turns out to be the
server's (that output item, or a tools list that arrives later), the handler fires
`tool_call_withdrawn`: with `no_client_call_left` the attempt goes back to `streaming` and
delivers text again, starting with the text held back since the call (so a hosted shell call,
followed in the same response by its output and the answer, hides nothing); otherwise the
attempt stays, or returns to `streaming` once `every_call_done`, still holding text back. A
function call is never withdrawn, so after one no text is held back for later.

Exceptions written in code rather than in the table:

- A final attempt takes no more input (events are counted as ignored, other inputs dropped): the
  drivers stop feeding it, and what a server sends after its terminal frame changes nothing. The
  attempt knows it is final by its `ending` (set by the final row), not by comparing states.
- Frame handlers keep the frame's content (`OutputAssembly`) and deliver text; they never look at
  the state. Text (answer and commentary) delivery depends on `tool_call_seen`, set by the row
  that enters `tool_call` (`then=stop_text`) and cleared by the `tool_call_withdrawn` row whose
  guard is `no_client_call_left` (`then=release_text`).

Text delivery across attempts (a `machines.delivery.DeliveryLedger` shared by the turn's
attempts, one channel each for answer text, commentary, refusals and reasoning): what reached the
user is never delivered again. A retry's text is compared with what was already delivered on the
same channel; only text past that point is delivered, and if the retry says something else,
nothing more of it is delivered on that channel (the result still holds the retry's own text,
never a mix of two attempts).

Background responses (`tracks_sequence`, set by the turn for a `background: true` request, so
that it can resume a broken stream and cancel an abandoned response): the attempt learns the response's id from
`response.created` / `.in_progress` and keeps the highest `sequence_number` received; an event
whose sequence number is not above it fires `stale_event` (a stay: recorded, not applied). A
`resume` attempt (`resumes=`) is the same response continued over `GET
/v1/responses/{id}?stream=true&starting_after=N`: it starts in the live state the broken attempt
was in, with its assembled content, its place in the delivered text and its call bookkeeping, so
the text goes on exactly where it stopped. A resume answered with a 4xx status other than 408,
409 and 429 (`resume_is_refused`) ends like a broken stream: the turn asks again, or falls back.

Hot path: one `Table` (one `transitions.Machine` inside) serves every attempt; in-state events
(text, reasoning and argument deltas) take a plain dispatch path (a set lookup says the table
keeps the state) and only events that change state go through a `transitions` trigger.
"""

from __future__ import annotations

import email.utils
import math
import re
from enum import StrEnum
from typing import Any, Callable, Final, Literal

import attrs
import orjson

from machines.delivery import DeliveryLedger
from machines.json_text import lenient_loads
from machines.output import (
    CallFacts,
    Moves,
    OutputAssembly,
    call_facts_of,
    declared_custom_tools,
    is_client_call,
    is_commentary,
)
from machines.records import (
    AttemptKind,
    Decision,
    Effect,
    effect,
    EndOfStream,
    EventTooLarge,
    Fault,
    HttpError,
    IdleTimeout,
    InputKind,
    Interrupt,
    MachineInput,
    Outcome,
    Reason,
    ReasonCode,
    SseEvent,
    Transition,
    TransportFault,
    TurnTimeout,
)
from machines.table import Row, Table

__all__ = [
    "DeliveryLedger",
    "Ending",
    "EndingRule",
    "FAULTS",
    "FINAL",
    "LIVE",
    "MACHINE",
    "State",
    "StreamAttempt",
    "TABLE",
    "Trigger",
    "INPUTS",
    "demanded_wait_s",
    "provider_error",
]

MACHINE: Final = "stream_attempt"


class State(StrEnum):
    """The states of a stream attempt (the values are what traces and results show)."""

    AWAITING_CREATED = "awaiting_created"
    STREAMING = "streaming"
    TOOL_CALL = "tool_call"
    TERMINAL = "terminal"
    FALLBACK = "fallback"
    RETIRE = "retire"


class Trigger(StrEnum):
    """What a frame means to an attempt (each frame's handler fires one). Every input that is
    not an event is its own trigger, under its vocabulary name (`INPUTS`)."""

    CREATED = "created"
    IN_PROGRESS = "in_progress"
    CONTENT = "content"
    COMMENTARY = "commentary"
    REFUSAL = "refusal"
    STALE_EVENT = "stale_event"
    TOOL_CALL_STARTED = "tool_call_started"
    TOOL_CALLS_DONE = "tool_calls_done"
    TOOL_CALL_WITHDRAWN = "tool_call_withdrawn"
    COMPLETED = "completed"
    INCOMPLETE = "incomplete"
    FAILED = "failed"
    ERROR_FRAME = "error_frame"


#: The inputs an attempt takes besides events, each its own trigger.
INPUTS: Final = (
    InputKind.HTTP_ERROR, *Fault, InputKind.IDLE_TIMEOUT, InputKind.EOF,
    InputKind.EVENT_TOO_LARGE, InputKind.TURN_TIMEOUT, InputKind.INTERRUPT,
)


LIVE: Final = frozenset({State.AWAITING_CREATED, State.STREAMING, State.TOOL_CALL})
FINAL: Final = frozenset({State.TERMINAL, State.FALLBACK, State.RETIRE})

#: Triggers that are byte-stream failures: worth another stream attempt.
FAULTS: Final = (Fault.DROP, Fault.READ_TIMEOUT, InputKind.IDLE_TIMEOUT, InputKind.EOF)

#: HTTP statuses worth another request (the openai SDK's own list).
RETRYABLE_STATUSES: Final = frozenset({408, 409, 429, *range(500, 600)})

#: Which retry budget may pay for another attempt: "stream" (a broken stream) or "http" (an
#: HTTP-level failure).
RetryKind = Literal["stream", "http"]


@attrs.frozen(slots=True)
class EndingRule:
    """What a final row decides: the turn's `outcome` if this attempt is its last, which budget
    may pay for another attempt (`retry`, None: none), and the reason's code (None: the
    trigger's own)."""

    outcome: Outcome
    retry: RetryKind | None = None
    reason: StrEnum | None = None


# -- guards: pure conditions of an attempt, referenced by the rows ------------------------------


def hands_over_to_fallback(attempt: StreamAttempt) -> bool:
    """This attempt is the last stream attempt and the policy allows a fallback."""
    return attempt.hands_over


def failure_is_retryable(attempt: StreamAttempt) -> bool:
    """The `response.failed` code is one the policy retries."""
    code = attempt.error_code
    return type(code) is str and code in attempt.retry_failed_codes


def resume_is_refused(attempt: StreamAttempt) -> bool:
    """A resume answered with a 4xx status that is not worth the same request again (404: the
    response is gone or was never a background one)."""
    status = attempt.http_status
    return (
        attempt.kind == "resume"
        and status is not None
        and 400 <= status < 500
        and status not in RETRYABLE_STATUSES
    )


def status_is_retryable(attempt: StreamAttempt) -> bool:
    """The HTTP status is one worth another request (408, 409, 429, 5xx)."""
    return attempt.http_status in RETRYABLE_STATUSES


def wait_is_acceptable(attempt: StreamAttempt) -> bool:
    """The server demanded no wait, or one no longer than the policy's `max_retry_wait_s` (a
    wait too large to represent is longer than any, an unlimited `max_retry_wait_s` too)."""
    wait = attempt.demanded_wait_s
    return wait is None or (math.isfinite(wait) and wait <= attempt.max_retry_wait_s)


def http_retry_left(attempt: StreamAttempt) -> bool:
    """The turn's HTTP retry budget (`max_http_retries`) is not spent."""
    return attempt.http_retries


def every_call_done(attempt: StreamAttempt) -> bool:
    """Every client call announced or streamed has its `output_item.done`."""
    return not any(attempt.is_client(facts) for facts in attempt.assembly.open_calls())


def no_client_call_left(attempt: StreamAttempt) -> bool:
    """No call seen in this attempt is still one the client must execute."""
    return not attempt.client_calls and not attempt.function_call_seen


# -- actions some rows take --------------------------------------------------------------------


def stop_text(attempt: StreamAttempt) -> None:
    """A call the client must execute began: answer text stops reaching the user."""
    attempt.tool_call_seen = True


def release_text(attempt: StreamAttempt) -> None:
    """No call of the client is left: deliver the text held back, and what follows."""
    attempt.release_withheld()


_T = Trigger
_S = State


def _retried(
    trigger: StrEnum, ending: EndingRule, *guards: Callable[[StreamAttempt], bool]
) -> list[Row[StreamAttempt, EndingRule]]:
    """Rows for something a stream attempt may be tried again after (when `guards` hold): it
    hands over to the fallback on the last stream attempt, else it retires (the turn tries
    again while stream attempts are left)."""
    return [
        Row(trigger, LIVE, State.FALLBACK, guards=(*guards, hands_over_to_fallback), decides=ending),
        Row(trigger, LIVE, State.RETIRE, guards=guards, decides=ending),
    ]


ROWS: Final[list[Row[StreamAttempt, EndingRule]]] = [
    # the response begins
    Row(_T.CREATED, _S.AWAITING_CREATED, _S.STREAMING),
    Row(_T.CREATED, (_S.STREAMING, _S.TOOL_CALL)),
    Row(_T.IN_PROGRESS, _S.AWAITING_CREATED, _S.STREAMING),
    Row(_T.IN_PROGRESS, (_S.STREAMING, _S.TOOL_CALL)),
    Row(_T.CONTENT, _S.AWAITING_CREATED, _S.STREAMING),
    Row(_T.CONTENT, (_S.STREAMING, _S.TOOL_CALL)),
    # a commentary message's text (its phase known to be "commentary"): content on a channel of
    # its own, held back after a call like answer text
    Row(_T.COMMENTARY, _S.AWAITING_CREATED, _S.STREAMING),
    Row(_T.COMMENTARY, (_S.STREAMING, _S.TOOL_CALL)),
    # the model refuses: refusal text, on a channel of its own, never held back
    Row(_T.REFUSAL, _S.AWAITING_CREATED, _S.STREAMING),
    Row(_T.REFUSAL, (_S.STREAMING, _S.TOOL_CALL)),
    # a background response's event already seen (its sequence number is not above the last one
    # this response sent): recorded, not applied
    Row(_T.STALE_EVENT, LIVE),
    # calls the client must execute: text stops reaching the user for the rest of the attempt
    Row(_T.TOOL_CALL_STARTED, (_S.AWAITING_CREATED, _S.STREAMING), _S.TOOL_CALL, then=stop_text),
    Row(_T.TOOL_CALL_STARTED, _S.TOOL_CALL),
    Row(_T.TOOL_CALLS_DONE, _S.TOOL_CALL, _S.STREAMING, guards=every_call_done),
    Row(_T.TOOL_CALLS_DONE, _S.TOOL_CALL),
    # a call turns out to be the server's (its output item came, or the declared tools do not
    # name it): with no client call left, answer text reaches the user again (the text held back
    # meanwhile first)
    Row(_T.TOOL_CALL_WITHDRAWN, (_S.STREAMING, _S.TOOL_CALL), _S.STREAMING,
        guards=no_client_call_left, then=release_text),
    Row(_T.TOOL_CALL_WITHDRAWN, _S.TOOL_CALL, _S.STREAMING, guards=every_call_done),
    Row(_T.TOOL_CALL_WITHDRAWN, (_S.STREAMING, _S.TOOL_CALL)),
    # the server ends the response: an outcome, not retried
    Row(_T.COMPLETED, LIVE, _S.TERMINAL, decides=EndingRule("completed")),
    Row(_T.INCOMPLETE, LIVE, _S.TERMINAL, decides=EndingRule("incomplete")),
    *_retried(_T.FAILED, EndingRule("failed", "stream", ReasonCode.RETRYABLE_FAILURE),
              failure_is_retryable),
    Row(_T.FAILED, LIVE, _S.TERMINAL, decides=EndingRule("failed")),
    Row(_T.ERROR_FRAME, LIVE, _S.TERMINAL, decides=EndingRule("error")),
    # a resume refused (another 4xx): the response cannot be continued, so the turn goes on by
    # the ordinary rules for a broken stream (a new request, or the fallback)
    *_retried(InputKind.HTTP_ERROR, EndingRule("error", "stream", ReasonCode.RESUME_REFUSED),
              resume_is_refused),
    # the request is answered with an error status: 408, 409, 429 and 5xx are tried again while
    # the turn's HTTP retry budget lasts, unless the server demands a longer wait than allowed
    Row(InputKind.HTTP_ERROR, LIVE, _S.RETIRE,
        guards=(status_is_retryable, wait_is_acceptable, http_retry_left),
        decides=EndingRule("error", "http", ReasonCode.HTTP_STATUS)),
    Row(InputKind.HTTP_ERROR, LIVE, _S.TERMINAL,
        decides=EndingRule("error", None, ReasonCode.HTTP_STATUS)),
    # no response at all (a connection error before the response headers): an HTTP retry while
    # the budget lasts; then the turn ends (no stream retry, no fallback)
    Row(Fault.CONNECT_ERROR, LIVE, _S.RETIRE, guards=http_retry_left,
        decides=EndingRule("error", "http")),
    Row(Fault.CONNECT_ERROR, LIVE, _S.RETIRE, decides=EndingRule("error")),
    # the byte stream fails: retried by the turn, or handed to the fallback
    *(row for fault in FAULTS for row in _retried(fault, EndingRule("error", "stream"))),
    # one event larger than the policy allows: the turn ends, nothing is retried
    Row(InputKind.EVENT_TOO_LARGE, LIVE, _S.RETIRE, decides=EndingRule("error")),
    # the turn's wall-clock limit passed (or the wait before this attempt would pass it): the
    # turn ends at once, nothing is retried, partial output kept
    Row(InputKind.TURN_TIMEOUT, LIVE, _S.RETIRE, decides=EndingRule("error")),
    # the caller stops the turn
    Row(InputKind.INTERRUPT, LIVE, _S.RETIRE,
        decides=EndingRule("interrupted", None, ReasonCode.INTERRUPTED)),
]

TABLE: Final[Table[StreamAttempt, EndingRule]] = Table(
    MACHINE, State, (*Trigger, *INPUTS), ROWS, initial=State.AWAITING_CREATED, final=FINAL
)


@attrs.frozen(slots=True)
class Ending:
    """How an attempt ended, read off the final row that fired.

    `outcome` is the turn's outcome if this attempt is its last; `retry` says which budget may pay
    for another attempt ("stream": a broken stream, "http": an HTTP-level failure, None: none);
    `reason` says why, as data (`str(reason)` is `Attempt.reason`); `wait_s` is the wait the server
    demanded before another request (None: it said nothing)."""

    state: State
    trigger: StrEnum
    outcome: Outcome
    retry: RetryKind | None
    reason: Reason
    wait_s: float | None = None


def provider_error(payload: dict[str, Any], default_type: str) -> dict[str, Any]:
    """The provider's error words, verbatim, from a top-level or nested `error` envelope."""
    nested = payload.get("error")
    if isinstance(nested, dict):
        error = dict(nested)
    else:
        error = {k: v for k, v in payload.items() if k not in ("sequence_number",)}
    error.setdefault("message", None)
    error.setdefault("code", None)
    if not error.get("type"):
        error["type"] = default_type
    return error


_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


class StreamAttempt:
    """One attempt, run on `TABLE`. Sans-I/O: `receive()` returns decisions.

    `number` counts attempts within the turn (from 1); `kind` is "stream", "fallback" or
    "resume"; `resumes` is the attempt a resume continues (it takes over that attempt's state,
    content, delivery position and sequence number); `tracks_sequence` says the response is a
    background one (the attempt learns its id and last sequence number, and ignores events it
    has already seen);
    `ledger` is the turn's record of delivered text; `hands_over_to_fallback` says whether a fault
    ends this attempt in `fallback` (the turn decides: last stream attempt and fallback allowed);
    `retry_failed_codes` lists the `response.failed` codes treated as faults;
    `max_retry_wait_s` is the longest wait a server may demand before an HTTP retry;
    `http_retry_left` says whether the turn's HTTP retry budget allows another request.
    """

    state: State

    def __init__(
        self,
        number: int,
        kind: AttemptKind,
        *,
        ledger: DeliveryLedger,
        hands_over_to_fallback: bool = False,
        retry_failed_codes: frozenset[str] = frozenset(),
        max_retry_wait_s: float = 60.0,
        http_retry_left: bool = False,
        tracks_sequence: bool = False,
        resumes: StreamAttempt | None = None,
    ) -> None:
        self.state = State.AWAITING_CREATED
        self.number = number
        self.kind = kind
        self.ledger = ledger
        self.hands_over = hands_over_to_fallback
        self.retry_failed_codes = retry_failed_codes
        self.assembly = OutputAssembly()
        #: Answer text is not delivered (set on entering `tool_call`, cleared when every call
        #: turned out to be the server's).
        self.tool_call_seen = False
        #: The `tools` list of the latest response object in `response.created` / `.in_progress`
        #: that names tools (None: none seen), and the custom tools it declares
        #: (`declared_custom_tools`).
        self.tools: list[Any] | None = None
        self.custom_tools: frozenset[str] | None = None
        #: Output indices of the calls counted as the client's (a later output item or tools
        #: list may take one back); a function-call frame is never taken back.
        self.client_calls: set[int] = set()
        self.function_call_seen = False
        #: Output indices of the items whose phase is known to be "commentary" (stated by their
        #: `output_item.added` or `.done`; a later statement replaces an earlier one).
        self.commentary_items: set[int] = set()
        #: Text held back while only calls that may still turn out the server's were seen: each
        #: delta with the commentary item it belongs to (None: answer text).
        self._withheld: list[tuple[int | None, str]] = []
        #: How the attempt ended; None while it is live.
        self.ending: Ending | None = None
        self.response: dict[str, Any] | None = None  # the terminal event's response
        self.error: dict[str, Any] | None = None
        self.http_status: int | None = None
        #: The wait before another request that the server demanded (headers or words).
        self.demanded_wait_s: float | None = None
        self.max_retry_wait_s = max_retry_wait_s
        self.http_retries = http_retry_left
        self.rate_limits: list[Any] = []
        self.undecodable = 0
        self.ignored = 0
        self._out: list[Decision] = []
        #: The background response's id (from `response.created` / `.in_progress`) and the
        #: highest sequence number received, when `tracks_sequence`; events not above it are
        #: counted in `stale`.
        self.tracks_sequence = tracks_sequence or resumes is not None
        self.response_id: str | None = None
        self.last_sequence: int | None = None
        self.stale = 0
        #: The live state the attempt was in when it ended (where a resume of it starts).
        self.live_state = State.AWAITING_CREATED
        #: What a resume asks for: the response id and the sequence number to start after.
        self.resume_point: tuple[str, int] | None = None
        if resumes is not None:
            self._take_over(resumes)  # the same run of text goes on
        else:
            ledger.restart()  # the answer starts again: catch up with what was delivered

    def _take_over(self, broken: StreamAttempt) -> None:
        """Continue `broken`, a background response's attempt that ended on a fault: its live
        state, the content it assembled, its place in the delivered text, what it knows of
        calls and tools, and the last sequence number it received."""
        if broken.response_id is None or broken.last_sequence is None:
            raise ValueError(f"attempt {broken.number} did not see a response id and sequence number")
        self.state = self.live_state = broken.live_state
        self.assembly = broken.assembly
        self.tool_call_seen = broken.tool_call_seen
        self.tools = broken.tools
        self.custom_tools = broken.custom_tools
        self.client_calls = set(broken.client_calls)
        self.function_call_seen = broken.function_call_seen
        self.commentary_items = set(broken.commentary_items)
        self._withheld = list(broken._withheld)
        self.response_id = broken.response_id
        self.last_sequence = broken.last_sequence
        self.resume_point = (broken.response_id, broken.last_sequence)

    @property
    def can_be_resumed(self) -> bool:
        """The attempt knows its background response's id and last sequence number."""
        return self.response_id is not None and self.last_sequence is not None

    # -- feeding -------------------------------------------------------------------------------
    @property
    def is_final(self) -> bool:
        """True once a final row fired (`terminal`, `fallback` or `retire`)."""
        return self.ending is not None

    @property
    def reason(self) -> str:
        """Why the attempt ended, as `Attempt.reason` shows it ("" while it is live)."""
        return str(self.ending.reason) if self.ending is not None else ""

    def receive(self, item: MachineInput) -> list[Decision]:
        """Feed one input record; return the decisions it caused, in order."""
        if type(item) is SseEvent:
            return self.receive_events([item])
        if self.ending is None:  # a final attempt takes no more input (see the docstring)
            if isinstance(item, HttpError):
                self.error = _http_error(item)
                self.http_status = item.status
                self.demanded_wait_s = demanded_wait_s(item)
                TABLE.feed(self, InputKind.HTTP_ERROR)
            elif isinstance(item, TransportFault):
                TABLE.feed(self, item.kind)
            elif isinstance(item, (EndOfStream, IdleTimeout, TurnTimeout, Interrupt, EventTooLarge)):
                TABLE.feed(self, item.KIND)
            else:
                raise TypeError(f"not a machine input: {type(item).__name__}")
        out = self._out
        self._out = []
        return out

    def receive_events(self, events: list[SseEvent]) -> list[Decision]:
        """Feed dispatched events in order until the attempt is final; return the decisions
        they caused. Events after the final one are not fed; one fed to an attempt already
        final is counted as ignored. (`receive_fields` of their names and data.)"""
        return self.receive_fields([item.event for item in events], [item.data for item in events])

    def receive_fields(self, names: list[str], datas: list[str]) -> list[Decision]:
        """`receive_events` of the events named `names` whose data are `datas` (the hot path:
        what `SseDecoder.feed_fields` gives, no record made for an event; one event after
        another without a call of its own). An event's name counts only when its data has no
        `type`: the data says what it is."""
        handlers = _HANDLERS
        for event, data in zip(names, datas):
            if self.ending is not None:
                self.ignored += 1
                break
            try:
                payload = _loads(data)
            except _JSONDecodeError:
                payload = _lenient_loads(data)
            if type(payload) is not dict:
                if data.strip() != "[DONE]":
                    self.undecodable += 1
            elif not self.tracks_sequence or self._in_sequence(payload):
                name = payload.get("type")
                if type(name) is not str:
                    name = "error" if isinstance(payload.get("error"), dict) else event
                handler = handlers.get(name)
                if handler is not None:
                    handler(self, payload)
                elif "function_call" in name:  # a function-call frame this version does not know
                    self.function_call_seen = True
                    TABLE.feed(self, Trigger.TOOL_CALL_STARTED)
                else:
                    self.ignored += 1
            if self.ending is not None:
                break
        out = self._out
        self._out = []
        return out

    def _in_sequence(self, payload: dict[str, Any]) -> bool:
        """Whether an event of a background response is new: one whose `sequence_number` is not
        above the last one seen is stale (a server sending again what it sent), counted and
        not applied."""
        sequence = payload.get("sequence_number")
        if type(sequence) is int:
            last = self.last_sequence
            if last is not None and sequence <= last:
                self.stale += 1
                TABLE.feed(self, Trigger.STALE_EVENT)
                return False
            self.last_sequence = sequence
        return True

    def _moved(self, row: Row[StreamAttempt, EndingRule], source: State) -> None:
        """A row that changes the state fired: record the transition; a final row (one that
        decides an ending) ends the attempt."""
        dest = row.dest
        assert isinstance(dest, State)
        self._out.append(Transition(MACHINE, self.number, source, dest, row.label))
        rule = row.decides
        if rule is not None:
            self.live_state = source
            code = rule.reason if rule.reason is not None else row.trigger
            self.ending = Ending(
                dest,
                row.trigger,
                rule.outcome,
                rule.retry,
                Reason(
                    code,
                    status=self.http_status
                    if code in (ReasonCode.HTTP_STATUS, ReasonCode.RESUME_REFUSED)
                    else None,
                    failure_code=self.error_code if code is ReasonCode.RETRYABLE_FAILURE else None,
                ),
                self.demanded_wait_s,
            )

    def release_withheld(self) -> None:
        """No call of the client is left: text flows again, the text held back first."""
        self.tool_call_seen = False
        withheld, self._withheld = self._withheld, []
        for index, delta in withheld:
            if index is None:
                self._deliver_text(delta)
            else:
                self._deliver_commentary(delta, index)

    @property
    def error_code(self) -> Any:
        """The provider's error code, if an error was seen."""
        return self.error.get("code") if self.error is not None else None

    # -- frame handlers (one per frame type; `_HANDLERS` maps names to them) --------------------
    def _created(self, payload: dict[str, Any]) -> None:
        TABLE.feed(self, Trigger.CREATED)
        self._learn_response(payload)

    def _in_progress(self, payload: dict[str, Any]) -> None:
        TABLE.feed(self, Trigger.IN_PROGRESS)
        self._learn_response(payload)

    def _learn_response(self, payload: dict[str, Any]) -> None:
        """A response object in a lifecycle frame: its id (a background response's, the first
        one seen) and the tools it declares."""
        if self.tracks_sequence and self.response_id is None:
            response = payload.get("response")
            rid = response.get("id") if isinstance(response, dict) else None
            if type(rid) is str and rid:
                self.response_id = rid
        self._learn_tools(payload)

    def _rate_limits(self, payload: dict[str, Any]) -> None:
        self.rate_limits.append(payload)
        self._out.append(Effect("rate_limits", self.number, payload))

    def _text_delta(self, payload: dict[str, Any]) -> None:
        delta = payload.get("delta")
        if type(delta) is not str:
            return
        index = self.assembly.text_delta(payload, delta)
        commentary = self.commentary_items
        if commentary and index in commentary:
            self._commentary_delta(index, delta)
            return
        if self.state not in _CONTENT_STAYS:  # `TABLE.feed(self, Trigger.CONTENT)`, inline
            TABLE.fire(self, Trigger.CONTENT)
        if not delta:
            return
        if self.tool_call_seen:
            if not self.function_call_seen:  # the calls seen may still turn out the server's
                self._withheld.append((None, delta))
            return
        text = self.ledger.text
        if text.length:  # `_deliver_text` after the first text, inline: no first delta to decide
            delta = text.take(delta)
            if delta:
                self._out.append(effect("text_delta", self.number, delta))
        else:
            self._deliver_text(delta)

    def _commentary_delta(self, index: int, delta: str) -> None:
        """Text of the commentary message at `index`: held back after a call as answer text is,
        delivered on the commentary channel."""
        TABLE.feed(self, Trigger.COMMENTARY)
        if not delta:
            return
        if self.tool_call_seen:
            if not self.function_call_seen:
                self._withheld.append((index, delta))
            return
        self._deliver_commentary(delta, index)

    def _refusal_delta(self, payload: dict[str, Any]) -> None:
        delta = payload.get("delta")
        if type(delta) is not str:
            return
        TABLE.feed(self, Trigger.REFUSAL)
        self.assembly.refusal_delta(payload, delta)
        delta = self.ledger.refusal.take(delta)
        if delta:
            self._out.append(Effect("refusal_delta", self.number, delta))

    def _refusal_done(self, payload: dict[str, Any]) -> None:
        text = payload.get("refusal")
        if type(text) is str:
            self.assembly.refusal_done(payload, text)

    def _reasoning_delta(self, payload: dict[str, Any]) -> None:
        delta = payload.get("delta")
        if type(delta) is not str:  # a delta that is not a string is ignored
            return
        TABLE.feed(self, Trigger.CONTENT)
        self.assembly.reasoning_delta(payload, delta)
        if delta:
            delta = self.ledger.reasoning.take(delta)
            if delta:
                self._out.append(Effect("reasoning_delta", self.number, delta))

    def _deliver_text(self, delta: str) -> None:
        text = self.ledger.text
        first = not text.length
        delta = text.take(delta)
        if delta:
            if first:
                # first under either routing, unless commentary already reached the user
                routing = "commentary_apart" if self.ledger.commentary.length else None
                self._out.append(Effect("first_delta", self.number, routing))
            self._out.append(Effect("text_delta", self.number, delta))

    def _deliver_commentary(self, delta: str, index: int) -> None:
        ledger = self.ledger
        first = not ledger.commentary.length and not ledger.text.length
        delta = ledger.take_commentary(delta, index)
        if delta:
            if first:  # the first text only where commentary goes to `on_text_delta`
                self._out.append(Effect("first_delta", self.number, "commentary_joined"))
            self._out.append(Effect("commentary_delta", self.number, delta))

    def _text_done(self, payload: dict[str, Any]) -> None:
        self.assembly.text_done(payload)

    def _item_added(self, payload: dict[str, Any]) -> None:
        placed = self.assembly.item_added(payload)
        if placed is None:
            TABLE.feed(self, Trigger.CONTENT)
        else:
            self._item(*placed, done=False)

    def _item_done(self, payload: dict[str, Any]) -> None:
        placed = self.assembly.item_done(payload)
        if placed is not None:
            self._item(*placed, done=True)

    def _item(self, index: int, item: dict[str, Any], moves: Moves, *, done: bool) -> None:
        """An item announced or finished: what was known of a place the assembly moved is known
        of it where it went; a phase the item states says whether its text is commentary; a
        client call starts (or finishes) one, a commentary item is commentary, anything else is
        content; then any counted call it shows to be the server's is withdrawn."""
        for source, dest in moves:
            for places in (self.client_calls, self.commentary_items):
                if source in places:
                    places.discard(source)
                    places.add(dest)
        if item.get("phase") is not None:
            if is_commentary(item):
                self.commentary_items.add(index)
            else:
                self.commentary_items.discard(index)
        facts = call_facts_of(item)
        if facts is not None and self.is_client(facts):
            self.function_call_seen |= facts[0] == "function_call"
            self.client_calls.add(index)
            TABLE.feed(self, Trigger.TOOL_CALL_STARTED)
            if done:
                TABLE.feed(self, Trigger.TOOL_CALLS_DONE)
        elif index in self.commentary_items:
            TABLE.feed(self, Trigger.COMMENTARY)
        else:
            TABLE.feed(self, Trigger.CONTENT)
        if self.client_calls:
            self._withdraw_server_calls()

    def _arguments_delta(self, payload: dict[str, Any]) -> None:
        delta = payload.get("delta")
        if type(delta) is str:
            self.assembly.arguments_delta(payload, delta)
        self.function_call_seen = True
        TABLE.feed(self, Trigger.TOOL_CALL_STARTED)

    def _arguments_done(self, payload: dict[str, Any]) -> None:
        self.assembly.arguments_done(payload)
        self.function_call_seen = True
        TABLE.feed(self, Trigger.TOOL_CALL_STARTED)

    def _custom_input_delta(self, payload: dict[str, Any]) -> None:
        delta = payload.get("delta")
        self._call_frame(
            self.assembly.custom_input_delta(payload, delta if type(delta) is str else "")
        )

    def _custom_input_done(self, payload: dict[str, Any]) -> None:
        self._call_frame(self.assembly.custom_input_done(payload))

    def _shell_command_added(self, payload: dict[str, Any]) -> None:
        command = payload.get("command")
        text = command if type(command) is str else ""
        self._call_frame(self.assembly.shell_command(payload, text, replace=True))

    def _shell_command_delta(self, payload: dict[str, Any]) -> None:
        delta = payload.get("delta")
        text = delta if type(delta) is str else ""
        self._call_frame(self.assembly.shell_command(payload, text, replace=False))

    def _shell_command_done(self, payload: dict[str, Any]) -> None:
        command = payload.get("command")
        if type(command) is str:
            self._call_frame(self.assembly.shell_command(payload, command, replace=True))
        else:
            self._call_frame(self.assembly.shell_command(payload, "", replace=False))

    def _call_frame(self, index: int) -> None:
        """A frame streaming part of the call at `index`: a tool call unless that call is known
        to be the server's (a frame whose item is no call at all counts as the client's)."""
        if index not in self.client_calls:
            facts = self.assembly.call_facts(index)
            if facts is not None and not self.is_client(facts):
                TABLE.feed(self, Trigger.CONTENT)
                return
            self.client_calls.add(index)
        TABLE.feed(self, Trigger.TOOL_CALL_STARTED)

    # -- which calls are the client's ------------------------------------------------------------
    def is_client(self, facts: CallFacts) -> bool:
        """Whether a call with these facts is the client's, by what this attempt has seen."""
        return is_client_call(facts, custom_tools=self.custom_tools, outputs=self.assembly.outputs)

    def _learn_tools(self, payload: dict[str, Any]) -> None:
        """A response object's `tools` list that names tools: the custom tools it declares decide
        custom tool calls from now on (calls already seen are judged again). A list that names
        none (absent, empty) changes nothing."""
        response = payload.get("response")
        tools = response.get("tools") if isinstance(response, dict) else None
        custom_tools = declared_custom_tools(tools)
        if custom_tools is None:
            return
        assert isinstance(tools, list)
        self.tools = tools
        if custom_tools == self.custom_tools:
            return
        self.custom_tools = custom_tools
        joined = [
            index
            for index, facts in self.assembly.calls()
            if index not in self.client_calls and self.is_client(facts)
        ]
        if joined:
            self.client_calls.update(joined)
            TABLE.feed(self, Trigger.TOOL_CALL_STARTED)
            TABLE.feed(self, Trigger.TOOL_CALLS_DONE)
        if self.client_calls:
            self._withdraw_server_calls()

    def _withdraw_server_calls(self) -> None:
        """Take back every counted call that is now known to be the server's, and fire
        `tool_call_withdrawn` if there was one."""
        withdrawn = [
            index
            for index in self.client_calls
            if (facts := self.assembly.call_facts(index)) is not None
            and not self.is_client(facts)
        ]
        if withdrawn:
            self.client_calls.difference_update(withdrawn)
            TABLE.feed(self, Trigger.TOOL_CALL_WITHDRAWN)

    def _keep_response(self, payload: dict[str, Any]) -> dict[str, Any]:
        response = payload.get("response")
        self.response = response if isinstance(response, dict) else {}
        return self.response

    def _completed(self, payload: dict[str, Any]) -> None:
        self._keep_response(payload)
        TABLE.feed(self, Trigger.COMPLETED)

    def _incomplete(self, payload: dict[str, Any]) -> None:
        self._keep_response(payload)
        TABLE.feed(self, Trigger.INCOMPLETE)

    def _failed(self, payload: dict[str, Any]) -> None:
        raw = self._keep_response(payload).get("error")
        self.error = provider_error({"error": raw if isinstance(raw, dict) else {}}, "response.failed")
        TABLE.feed(self, Trigger.FAILED)

    def _error_frame(self, payload: dict[str, Any]) -> None:
        self.error = provider_error(payload, "error")
        TABLE.feed(self, Trigger.ERROR_FRAME)

    # -- results -------------------------------------------------------------------------------
    def final_response(self) -> dict[str, Any] | None:
        """The terminal response with its output backfilled (when it is empty, null or not a
        list at all), or None without one."""
        if not self.response:
            return None
        output = self.response.get("output")
        if isinstance(output, list) and output:
            return self.response
        return {**self.response, "output": self.partial_items()}

    def declared_tools(self) -> list[Any] | None:
        """The `tools` list that judges this attempt's custom tool calls: the terminal response's
        when it names tools, else the latest such list `response.created` / `.in_progress`
        carried (None: none seen)."""
        tools = self.response.get("tools") if self.response else None
        return tools if declared_custom_tools(tools) is not None else self.tools

    def partial_items(self) -> list[dict[str, Any]]:
        """Everything this attempt streamed, as output items (done items as sent)."""
        return self.assembly.items("incomplete" if self.reason != "completed" else "completed")


def _lenient_loads(data: str) -> Any:
    """What the standard library's JSON reader makes of data orjson refuses (numbers such as
    `1e999`, lone surrogate escapes), or None when it is not JSON at all or nests deeper than
    orjson reads: the same at any recursion limit (`machines.json_text`)."""
    return lenient_loads(data)


_TRY_AGAIN = re.compile(r"try again in (\d+(?:\.\d+)?)\s*(ms|s|sec|seconds?)\b", re.IGNORECASE)


def demanded_wait_s(item: HttpError) -> float | None:
    """The wait before another request that an HTTP error demands, in seconds, or None:
    `retry-after-ms` wins over `Retry-After` (seconds, or an HTTP date measured from when the
    answer came), which wins over "try again in N s" in the error message. A wait too large to
    represent (`Retry-After` of hundreds of digits reads as infinity) is `math.inf`: longer than
    any `max_retry_wait_s`, never a wait of none; a value that is no number at all says
    nothing."""
    value = item.header("retry-after-ms")
    if value is not None:
        seconds = _number(value) / 1000
        if seconds >= 0:  # NaN, garbage and negative waits say nothing
            return seconds
    value = item.header("retry-after")
    if value is not None:
        seconds = _number(value)
        if math.isnan(seconds):
            seconds = _seconds_until(value, item.received_at)
        if seconds >= 0:
            return seconds
    message = _http_error(item).get("message")
    if isinstance(message, str):
        match = _TRY_AGAIN.search(message)
        if match is not None:
            amount = float(match.group(1))  # digits only: finite, or infinity when too long
            return amount / 1000 if match.group(2).lower() == "ms" else amount
    return None


def _number(text: str) -> float:
    """`text` as a number of seconds: infinity for one too large to represent, NaN for text
    that is no number."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def _seconds_until(http_date: str, received_at: float | None) -> float:
    try:
        when = email.utils.parsedate_to_datetime(http_date)
    except (TypeError, ValueError, IndexError):
        return math.nan
    if received_at is None or when.tzinfo is None:
        return math.nan
    return max(0.0, when.timestamp() - received_at)


def _http_error(item: HttpError) -> dict[str, Any]:
    body = item.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = provider_error(body, "http_error")
    elif isinstance(body, dict) and "message" in body:
        error = provider_error(body, "http_error")
    else:
        error = {
            "message": body if isinstance(body, str) and body else f"HTTP {item.status}",
            "code": None,
            "type": "http_error",
        }
    error["status"] = item.status
    return error


#: The states in which text is a stay (the hot path of a streamed answer: one per delta).
_CONTENT_STAYS: Final = TABLE.staying(Trigger.CONTENT)

_HANDLERS: Final[dict[str, Callable[[StreamAttempt, dict[str, Any]], None]]] = {
    "response.created": StreamAttempt._created,
    "response.in_progress": StreamAttempt._in_progress,
    "codex.rate_limits": StreamAttempt._rate_limits,
    "response.output_text.delta": StreamAttempt._text_delta,
    "response.output_text.done": StreamAttempt._text_done,
    "response.refusal.delta": StreamAttempt._refusal_delta,
    "response.refusal.done": StreamAttempt._refusal_done,
    "response.reasoning_summary_text.delta": StreamAttempt._reasoning_delta,
    "response.reasoning_text.delta": StreamAttempt._reasoning_delta,
    "response.output_item.added": StreamAttempt._item_added,
    "response.output_item.done": StreamAttempt._item_done,
    "response.function_call_arguments.delta": StreamAttempt._arguments_delta,
    "response.function_call_arguments.done": StreamAttempt._arguments_done,
    "response.custom_tool_call_input.delta": StreamAttempt._custom_input_delta,
    "response.custom_tool_call_input.done": StreamAttempt._custom_input_done,
    "response.shell_call_command.added": StreamAttempt._shell_command_added,
    "response.shell_call_command.delta": StreamAttempt._shell_command_delta,
    "response.shell_call_command.done": StreamAttempt._shell_command_done,
    "response.completed": StreamAttempt._completed,
    "response.incomplete": StreamAttempt._incomplete,
    "response.failed": StreamAttempt._failed,
    "error": StreamAttempt._error_frame,
}
