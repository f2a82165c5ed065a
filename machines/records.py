"""Tiny frozen records: what the machines are fed and what they answer.

One vocabulary for what the outside world does, shared by the drivers, the trace format, the
fuzzing strategies and the simulator (a `TransportFault("drop")` is the same thing everywhere):

    Chunk           bytes exactly as one network read delivered them (the simulator: one HTTP chunk)
    SseEvent        one dispatched server-sent event (name, data, id), still undecoded
    HttpError       the request was answered with a non-2xx status (status, JSON body if any)
    TransportFault  the byte stream broke: "drop", "read_timeout", "connect_error"
    EndOfStream     the byte stream ended cleanly
    Stall           the server stays silent for some seconds (a driver observes it as nothing, or
                    as an `IdleTimeout` when the policy has one)
    IdleTimeout     no byte arrived for the policy's idle timeout
    Interrupt       the caller asked to stop

A driver (network, file, replay) produces them; the machines never produce them and never look
anywhere else. A machine is fed `SseEvent`s (decoded from `Chunk`s by the driver) and the other
inputs; `Chunk` and `Stall` never reach a machine.

Outputs are what the machines decided:

    Transition      one state change of one machine (the trace and `TurnResult.transitions`)
    Effect          something that reaches the world: text delivered to a callback, the first
                    delta, a tool call, an error, a rate-limit notice
    Attempt         how one attempt ended (`TurnResult.attempts`)
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

FaultKind = Literal["drop", "read_timeout", "connect_error"]
AttemptKind = Literal["stream", "fallback"]


@attrs.frozen(slots=True)
class Chunk:
    """Bytes exactly as one network read delivered them."""

    data: bytes


@attrs.frozen(slots=True)
class SseEvent:
    """One event as the WHATWG event-stream parser dispatches it."""

    event: str
    data: str
    id: str | None = None


@attrs.frozen(slots=True)
class HttpError:
    """The request was answered with a non-2xx status; `body` is the parsed JSON body if any."""

    status: int
    body: Any = None


@attrs.frozen(slots=True)
class TransportFault:
    """The byte stream broke; `detail` is the exception's class name (never its text)."""

    kind: FaultKind = "drop"
    detail: str = ""


@attrs.frozen(slots=True)
class EndOfStream:
    """The response body ended cleanly."""


def _non_negative_seconds(instance: Any, attribute: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{attribute.name} must be a number of seconds >= 0, not {value!r}")


@attrs.frozen(slots=True)
class Stall:
    """The server stays silent for `seconds` with the connection open."""

    seconds: float = attrs.field(default=60.0, validator=_non_negative_seconds)


@attrs.frozen(slots=True)
class IdleTimeout:
    """No byte arrived for `seconds` (the policy's idle timeout)."""

    seconds: float


@attrs.frozen(slots=True)
class Interrupt:
    """The caller asked the turn to stop."""


@attrs.frozen(slots=True)
class EventTooLarge:
    """One server-sent event grew past `limit` bytes (the policy's `max_event_bytes`). Derived by
    the decoder from the recorded chunks, so a replay derives it again."""

    limit: int


#: Inputs that end an attempt (or could): everything a driver observes except bytes.
StreamInput = HttpError | TransportFault | EndOfStream | IdleTimeout | Interrupt

#: What a machine is fed.
MachineInput = SseEvent | StreamInput


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
    "first_delta", "text_delta", "reasoning_delta", "tool_call", "error", "rate_limits"
]


@attrs.frozen(slots=True)
class Effect:
    """Something a machine decided that reaches the world: text for a callback, the first delta,
    a tool call, an error, a rate-limit notice. The event log records it, then acts on it."""

    kind: EffectKind
    attempt: int
    data: Any = None


#: What feeding a machine returns: its decisions, in order.
Decision = Transition | Effect


@attrs.frozen(slots=True)
class Attempt:
    """How one attempt of a turn ended: its number, kind ("stream" or "fallback"), final state
    and reason (the trigger that ended it, or a detail such as `http_429`)."""

    number: int
    kind: AttemptKind
    final_state: str
    reason: str


def _non_negative_int(instance: Any, attribute: Any, value: Any) -> None:
    if type(value) is not int or value < 0:
        raise ValueError(f"{attribute.name} must be a whole number >= 0, not {value!r}")


def _positive_seconds_or_none(instance: Any, attribute: Any, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{attribute.name} must be None or a number of seconds > 0, not {value!r}")


@attrs.frozen(slots=True)
class TurnPolicy:
    """How hard a turn tries. The defaults match the seed runtime."""

    max_stream_retries: int = attrs.field(default=1, validator=_non_negative_int)
    fallback: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    idle_timeout_s: float | None = attrs.field(default=None, validator=_positive_seconds_or_none)
    #: `response.failed` codes treated as retryable faults instead of outcomes.
    retry_failed_codes: frozenset[str] = attrs.field(default=frozenset(), converter=frozenset)


Outcome = Literal["completed", "incomplete", "failed", "error", "interrupted"]


@attrs.frozen(slots=True)
class TurnResult:
    """What a turn produced: its outcome, the final response, the answer text, the tool calls,
    the provider's error, every attempt and every transition (see the README for each field)."""

    outcome: Outcome
    response: dict[str, Any] | None
    output_text: str
    tool_calls: list[dict[str, Any]]
    error: dict[str, Any] | None
    attempts: list[Attempt]
    transitions: list[Transition]
    #: `codex.rate_limits` payloads seen before or during the answer, in order.
    rate_limits: list[Any] = attrs.field(factory=list)

    def to_json(self) -> dict[str, Any]:
        """The result as plain JSON data (the trace's `result` record, minus transitions)."""
        return {
            "outcome": self.outcome,
            "response": self.response,
            "output_text": self.output_text,
            "tool_calls": self.tool_calls,
            "error": self.error,
            "attempts": [attrs.asdict(a) for a in self.attempts],
            "rate_limits": self.rate_limits,
        }
