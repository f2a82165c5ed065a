"""Tiny frozen records: what the machines are fed and what they answer.

One vocabulary for what the outside world does, shared by the drivers, the trace format, the
fuzzing strategies and the simulator (a `TransportFault(Fault.DROP)` is the same thing
everywhere). Every kind of input has one name, its `InputKind` (the record's `KIND`): the trace
writes it as the `input` field of an input record, the machines fire the trigger of that name,
and the simulator, the scenario files and the strategies speak of it by that name; the ways a
byte stream breaks are named once, in `Fault`:

    Chunk           bytes exactly as one network read delivered them (the simulator: one HTTP chunk)
    SseEvent        one dispatched server-sent event (name, data, id), still undecoded
    HttpError       the request was answered with a non-2xx status (status, JSON body if any)
    TransportFault  the byte stream broke: `Fault.DROP`, `.READ_TIMEOUT`, `.CONNECT_ERROR`
    EndOfStream     the byte stream ended cleanly
    Stall           the server stays silent for some seconds (a driver observes it as nothing, or
                    as an `IdleTimeout` when the policy has one)
    IdleTimeout     no byte arrived for the policy's idle timeout
    TurnTimeout     the turn reached its wall-clock limit (`TurnPolicy.turn_timeout_s`; a codex
                    app-server session's `turn_timeout_s`), or a wait before its next attempt
                    would pass it
    Interrupt       the caller asked to stop

A driver (network, file, replay) produces them; the machines never produce them and never look
anywhere else. A machine is fed `SseEvent`s (decoded from `Chunk`s by the driver) and the other
inputs; `Chunk` and `Stall` never reach a machine.

Outputs are what the machines decided:

    Transition      one state change of one machine (the trace and `TurnResult.transitions`)
    Effect          something that reaches the world: text delivered to a callback (answer text,
                    commentary, a refusal, reasoning), the first delta, a tool call, an error, a
                    rate-limit notice; for the codex app-server machines also a line to send, an
                    approval to ask for, a client tool to call, the answer to a steer, a
                    projected chat message, the turn's outcome, the subprocess to retire
    Attempt         how one attempt ended (`TurnResult.attempts`)
    RetryNotice     the turn is about to try again (the caller's `Callbacks.on_retry` hears it)
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Callable, ClassVar, Literal

import attrs


class InputKind(StrEnum):
    """Every kind of input, by its name: the `input` field of a trace's input record (for the
    kinds a trace records) and the trigger the machines fire for it."""

    CHUNK = "chunk"
    EVENT = "event"
    HTTP_ERROR = "http_error"
    FAULT = "fault"
    EOF = "eof"
    STALL = "stall"
    IDLE_TIMEOUT = "idle_timeout"
    #: a turn's wall-clock limit, of either protocol (a stream turn's, an app-server turn's)
    TURN_TIMEOUT = "turn_timeout"
    INTERRUPT = "interrupt"
    EVENT_TOO_LARGE = "event_too_large"
    # codex app-server sessions (machines.app_records)
    LINE = "line"
    STDERR = "stderr"
    EXIT = "exit"
    SPAWN_FAILED = "spawn_failed"
    TURN = "turn"
    APPROVAL = "approval"
    REQUEST_TIMEOUT = "request_timeout"
    INTERRUPT_TIMEOUT = "interrupt_timeout"
    TOOL_ANSWER = "tool_answer"
    STEER = "steer"
    CLOSE = "close"
    COMPACT = "compact"


class Fault(StrEnum):
    """How a byte stream breaks (`TransportFault.kind`); each is also the trigger it fires."""

    DROP = "drop"
    READ_TIMEOUT = "read_timeout"
    CONNECT_ERROR = "connect_error"


class Input:
    """What every input record is: it names its kind (`KIND`, given in the class statement:
    `class Chunk(Input, kind=InputKind.CHUNK)`)."""

    __slots__ = ()

    KIND: ClassVar[InputKind]

    def __init_subclass__(cls, kind: InputKind | None = None, **rest: Any) -> None:
        super().__init_subclass__(**rest)
        if kind is not None:
            cls.KIND = kind


#: The old name of `Fault`.
FaultKind = Fault
AttemptKind = Literal["stream", "fallback", "resume"]
Outcome = Literal["completed", "incomplete", "failed", "error", "interrupted"]


@attrs.frozen(slots=True)
class Chunk(Input, kind=InputKind.CHUNK):
    """Bytes exactly as one network read delivered them."""

    data: bytes


@attrs.frozen(slots=True)
class SseEvent(Input, kind=InputKind.EVENT):
    """One event as the WHATWG event-stream parser dispatches it."""

    event: str
    data: str
    id: str | None = None


def _header_pairs(value: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(value, dict):
        value = value.items()
    return tuple((str(name).lower(), str(text)) for name, text in value)


@attrs.frozen(slots=True)
class HttpError(Input, kind=InputKind.HTTP_ERROR):
    """The request was answered with a non-2xx status; `body` is the parsed JSON body if any.

    `headers` keeps the response headers that say when to try again (`retry-after`,
    `retry-after-ms`, `x-ratelimit-*`, `x-request-id`), names lower-cased; `received_at` is the
    wall clock (seconds since the epoch) when the answer came, so an HTTP-date `Retry-After`
    means the same wait on replay."""

    status: int
    body: Any = None
    headers: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_header_pairs)
    received_at: float | None = None

    def header(self, name: str) -> str | None:
        """The value of the (lower-case) header `name`, or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@attrs.frozen(slots=True)
class TransportFault(Input, kind=InputKind.FAULT):
    """The byte stream broke; `detail` is the exception's class name (never its text)."""

    kind: Fault = attrs.field(default=Fault.DROP, converter=Fault)
    detail: str = ""


@attrs.frozen(slots=True)
class EndOfStream(Input, kind=InputKind.EOF):
    """The response body ended cleanly."""


def _non_negative_seconds(instance: Any, attribute: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{attribute.name} must be a number of seconds >= 0, not {value!r}")


@attrs.frozen(slots=True)
class Stall(Input, kind=InputKind.STALL):
    """The server stays silent for `seconds` with the connection open."""

    seconds: float = attrs.field(default=60.0, validator=_non_negative_seconds)


@attrs.frozen(slots=True)
class IdleTimeout(Input, kind=InputKind.IDLE_TIMEOUT):
    """No byte arrived for `seconds` (the policy's idle timeout)."""

    seconds: float


@attrs.frozen(slots=True)
class TurnTimeout(Input, kind=InputKind.TURN_TIMEOUT):
    """The turn reached its wall-clock limit of `seconds`: it has run that long, or the wait
    before its next attempt would take it past that (a driver does not wait for a request it
    may not send). The same record for a stream turn (`TurnPolicy.turn_timeout_s`) and a codex
    app-server turn (the session's `turn_timeout_s`)."""

    seconds: float


@attrs.frozen(slots=True)
class Interrupt(Input, kind=InputKind.INTERRUPT):
    """The caller asked the turn to stop."""


@attrs.frozen(slots=True)
class EventTooLarge(Input, kind=InputKind.EVENT_TOO_LARGE):
    """One server-sent event grew past `limit` bytes (the policy's `max_event_bytes`). Derived by
    the decoder from the recorded chunks, so a replay derives it again."""

    limit: int


#: Inputs that end an attempt (or could): everything a driver observes except bytes.
StreamInput = HttpError | TransportFault | EndOfStream | IdleTimeout | TurnTimeout | Interrupt

#: What a machine is fed besides events: the driver's observations and what the decoder derives.
AttemptInput = StreamInput | EventTooLarge

#: What a machine is fed.
MachineInput = SseEvent | AttemptInput


@attrs.frozen(slots=True)
class Transition:
    """One state change of one machine. `seq` is its place in the turn's event log (-1 until the
    log records it)."""

    machine: str
    attempt: int
    source: str
    dest: str
    trigger: str
    seq: int = -1


EffectKind = Literal[
    "first_delta", "text_delta", "reasoning_delta", "tool_call", "error", "rate_limits", "wait",
    "cancel", "commentary_delta", "refusal_delta",
    # codex app-server machines (machines.app_session, machines.app_turn)
    "send", "approval", "message", "outcome", "retire", "call_tool", "steered",
]


#: The `data` of a `first_delta` effect that comes before the first delta only under one routing
#: of commentary: "commentary_joined" when commentary goes to `on_text_delta` (no
#: `on_commentary_delta`: the first commentary delta is the first text), "commentary_apart" when
#: it has a callback of its own (the first answer delta after commentary is the first text). A
#: `first_delta` whose data is None is first either way.
FirstDeltaRouting = Literal["commentary_joined", "commentary_apart"]


@attrs.frozen(slots=True)
class Effect:
    """Something a machine decided that reaches the world: text for a callback (`text_delta`,
    `commentary_delta`, `refusal_delta`, `reasoning_delta`), the first delta (`data`: None, or
    the `FirstDeltaRouting` it is first under), a tool call, an error, a rate-limit notice, a
    wait before the next attempt (`data`: seconds), the cancellation of a background response
    (`data`: its id). The event log records it, then the driver acts on it."""

    kind: EffectKind
    attempt: int
    data: Any = None


#: What feeding a machine returns: its decisions, in order.
Decision = Transition | Effect


# -- records made on the hot path -----------------------------------------------------------------
#
# A frozen attrs class's `__init__` stores each field with a call of `object.__setattr__` (the
# class's own `__setattr__` refuses). A long answer makes an `SseEvent` and an `Effect` per delta,
# and those calls are a tenth of what digesting a delta costs; `sse_event` and `effect` (defined
# at the end of the module, once the classes are) make the same records with the slots' own
# setters. Only for classes whose `__init__` does nothing but store its arguments
# (`_slot_setters` checks).


def _slot_setters(cls: type) -> tuple[Any, ...]:
    """The setters of a frozen slotted attrs class's fields, in order (`TypeError` for a class
    whose `__init__` does more than store its arguments: a validator, a converter, a factory)."""
    setters = []
    for field in attrs.fields(cls):
        if (field.validator is not None or field.converter is not None
                or isinstance(field.default, attrs.Factory)):  # type: ignore[arg-type]
            raise TypeError(f"{cls.__name__}.{field.name}: its __init__ does more than store it")
        setters.append(cls.__dict__[field.name].__set__)
    return tuple(setters)


def _made_by_slots(cls: type) -> Callable[[Any, Any, Any], Any]:
    """What `cls(a, b, c)` makes, for a class of three fields (see above)."""
    first, second, third = _slot_setters(cls)
    new = object.__new__

    def make(a: Any, b: Any, c: Any) -> Any:
        made: Any = new(cls)
        first(made, a)
        second(made, b)
        third(made, c)
        return made

    return make


class ReasonCode(StrEnum):
    """Why an attempt ended, where that is not simply the trigger that ended it (a `Reason`'s
    code is that trigger otherwise); the codes below carry a detail (`Reason.status`,
    `Reason.failure_code`) or name what the trigger does not."""

    INTERRUPTED = "interrupted"
    #: the request was answered with an HTTP error status (`status`)
    HTTP_STATUS = "http_status"
    #: `response.failed` with a code the policy retries (`failure_code`)
    RETRYABLE_FAILURE = "retryable_failure"
    #: a resume answered with a 4xx status that is not worth the same request again (`status`)
    RESUME_REFUSED = "resume_refused"


@attrs.frozen(slots=True)
class Reason:
    """Why an attempt ended, as data: a `code` (the trigger that ended it, e.g. `Fault.DROP`, or
    a `ReasonCode`) and the detail fields that code carries. Code reads the fields; `str(reason)`
    is the text `Attempt.reason` shows (`http_429`, `failed:server_error`, `resume_refused:404`,
    or the code)."""

    code: StrEnum
    status: int | None = None
    failure_code: str | None = None

    def __str__(self) -> str:
        code = self.code
        if code is ReasonCode.HTTP_STATUS:
            return f"http_{self.status}"
        if code is ReasonCode.RETRYABLE_FAILURE:
            return f"failed:{self.failure_code}"
        if code is ReasonCode.RESUME_REFUSED:
            return f"resume_refused:{self.status}"
        return str(code.value)


@attrs.frozen(slots=True)
class Attempt:
    """How one attempt of a turn ended: its number, kind ("stream", "fallback" or "resume"),
    final state and reason (the trigger that ended it, or a detail such as `http_429`). Every
    HTTP request of a turn is one attempt, HTTP-level retries included."""

    number: int
    kind: AttemptKind
    final_state: str
    reason: str


@attrs.frozen(slots=True)
class RetryNotice:
    """A turn is about to try again, told to the caller before it does (`Callbacks.on_retry`),
    so a UI can say "Reconnecting... 2/3" while the wait runs: `number` is the attempt about to
    start (2 for the first retry; for a codex app-server session, the subprocess about to start),
    `kind` its kind, `reason` why the one before it ended (as `Attempt.reason` says it), `wait_s`
    the wait before it starts (0.0 when there is none)."""

    number: int
    kind: AttemptKind
    reason: str
    wait_s: float


def _non_negative_int(instance: Any, attribute: Any, value: Any) -> None:
    if type(value) is not int or value < 0:
        raise ValueError(f"{attribute.name} must be a whole number >= 0, not {value!r}")


def _positive_seconds_or_none(instance: Any, attribute: Any, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{attribute.name} must be None or a number of seconds > 0, not {value!r}")


def _non_negative_int_or_none(instance: Any, attribute: Any, value: Any) -> None:
    if value is not None:
        _non_negative_int(instance, attribute, value)


def _positive_seconds(instance: Any, attribute: Any, value: Any) -> None:
    if value is None:
        raise ValueError(f"{attribute.name} must be a number of seconds > 0, not None")
    _positive_seconds_or_none(instance, attribute, value)


def _positive_int(instance: Any, attribute: Any, value: Any) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"{attribute.name} must be a whole number >= 1, not {value!r}")


def _string_codes(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        raise TypeError("retry_failed_codes must be a collection of codes, not one string")
    codes = frozenset(value)
    for code in codes:
        if not isinstance(code, str):
            raise TypeError(f"retry_failed_codes must hold strings, not {type(code).__name__}")
    return codes


@attrs.frozen(slots=True)
class TurnPolicy:
    """How hard a turn tries. The defaults match the seed runtime.

    `max_stream_retries`: extra stream attempts after a retryable fault. `fallback`: after the
    last stream attempt, one `create(stream=True)` attempt. `idle_timeout_s`: an attempt with no
    bytes for this long is a retryable fault. `retry_failed_codes`: `response.failed` codes
    treated as retryable faults. `max_http_retries`: retries of 408/409/429/5xx answers and of
    connection errors before the response (None: the client's own `max_retries`).
    `max_retry_wait_s`: the longest wait a server may demand before a retry; longer ends the
    turn. `max_event_bytes`: one server-sent event larger than this ends the turn. `resume`:
    resume a dropped background response instead of asking again. `turn_timeout_s`: a
    wall-clock limit for the whole turn, every attempt and every wait included: past it the turn
    ends at once, outcome "error", reason `turn_timeout`, partial output kept (an idle timeout
    never fires for a server that drips a byte now and then; this does), and a wait before a
    retry that would pass it ends the turn without waiting."""

    max_stream_retries: int = attrs.field(default=1, validator=_non_negative_int)
    fallback: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    idle_timeout_s: float | None = attrs.field(default=None, validator=_positive_seconds_or_none)
    #: `response.failed` codes treated as retryable faults instead of outcomes.
    retry_failed_codes: frozenset[str] = attrs.field(default=frozenset(), converter=_string_codes)
    max_http_retries: int | None = attrs.field(default=None, validator=_non_negative_int_or_none)
    max_retry_wait_s: float = attrs.field(default=60.0, validator=_positive_seconds)
    max_event_bytes: int = attrs.field(default=64 * 2**20, validator=_positive_int)
    resume: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    turn_timeout_s: float | None = attrs.field(default=None, validator=_positive_seconds_or_none)


def _output_text_of(result: TurnResult) -> str:
    return result.output_text


@attrs.frozen(slots=True)
class TurnResult:
    """What a turn produced: its outcome, the final response, the text of the answer (all of it,
    the answer proper, the commentary, a refusal), the tool calls, the provider's error, every
    attempt and every transition (see the README for each field)."""

    outcome: Outcome
    response: dict[str, Any] | None
    output_text: str
    tool_calls: list[dict[str, Any]]
    error: dict[str, Any] | None
    attempts: list[Attempt]
    transitions: list[Transition]
    #: `codex.rate_limits` payloads seen before or during the answer, in order.
    rate_limits: list[Any] = attrs.field(factory=list)
    #: `output_text` without the messages labelled `phase: "commentary"` (no phase: answer).
    answer_text: str = attrs.field(default=attrs.Factory(_output_text_of, takes_self=True))
    #: The text of each `phase: "commentary"` message, in output order.
    commentary: list[str] = attrs.field(factory=list)
    #: Every refusal part's text joined in output order, or None when the model did not refuse.
    refusal: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The result as plain JSON data (the trace's `result` record, minus transitions).

        `answer_text`, `commentary` and `refusal` are written only where they say something
        `output_text` does not (commentary, a refusal): a result without either is written as
        before them, so a trace of such a turn reads the same whichever version wrote it."""
        out = {
            "outcome": self.outcome,
            "response": self.response,
            "output_text": self.output_text,
            "tool_calls": self.tool_calls,
            "error": self.error,
            "attempts": [attrs.asdict(a) for a in self.attempts],
            "rate_limits": self.rate_limits,
        }
        if self.commentary or self.answer_text != self.output_text:
            out["answer_text"] = self.answer_text
            out["commentary"] = self.commentary
        if self.refusal is not None:
            out["refusal"] = self.refusal
        return out


#: `SseEvent(event, data, id)`, made faster (see "records made on the hot path").
sse_event: Callable[[str, str, str | None], SseEvent] = _made_by_slots(SseEvent)
#: `Effect(kind, attempt, data)`, made faster (see "records made on the hot path").
effect: Callable[[EffectKind, int, Any], Effect] = _made_by_slots(Effect)
