"""The event log: every input a turn saw and every decision its machines made, in one order.

The drivers append *input records* (raw chunks with their boundaries, HTTP errors, transport
faults, end of stream, idle timeouts, interrupts, each with the driver's clock reading) with
`input()`, and the machines' decisions (`Transition` and `Effect` records, returned by
`receive()`) with `decide()`. A record's sequence number is its place in the log (from 1).
`decide()` records the decisions first and only then acts on them: effects that reach the user are
handed to the caller's callbacks, fenced (a raising callback is logged and never breaks the
turn), and transitions are logged through structlog (few per turn). The per-delta records are
only appended to a list (cheap) and rendered in bulk when a trace is written.
"""

from __future__ import annotations

from typing import Any, Callable

import attrs

from engine.log.logs import log
from machines.records import (
    Chunk,
    Decision,
    Effect,
    StreamInput,
    Transition,
)

__all__ = ["Callbacks", "EventLog", "InputRecord", "Record", "RecordedInput"]


def _callable_or_none(instance: Any, attribute: Any, value: Any) -> None:
    if value is not None and not callable(value):
        raise TypeError(
            f"Callbacks.{attribute.name} must be callable or None, not {type(value).__name__}"
        )


@attrs.frozen(slots=True)
class Callbacks:
    """What the caller wants to hear while a turn streams. Every field is optional.

    `on_first_delta()` runs once per turn before the first text delta; `on_text_delta(text)`
    gets answer text (never after a tool call was seen in that attempt); `on_reasoning_delta(text)`
    gets reasoning and reasoning-summary text. A callback that raises is logged and ignored."""

    on_first_delta: Callable[[], Any] | None = attrs.field(default=None, validator=_callable_or_none)
    on_text_delta: Callable[[str], Any] | None = attrs.field(
        default=None, validator=_callable_or_none
    )
    on_reasoning_delta: Callable[[str], Any] | None = attrs.field(
        default=None, validator=_callable_or_none
    )


#: What a driver records as an attempt's input.
RecordedInput = Chunk | StreamInput


@attrs.frozen(slots=True)
class InputRecord:
    """One observation of the outside world, as the driver recorded it for attempt `attempt`;
    `t` is the driver's monotonic clock, seconds since the turn began (None without a clock)."""

    attempt: int
    t: float | None
    input: RecordedInput


#: A record of the log; its sequence number is its position (from 1).
Record = InputRecord | Transition | Effect


class EventLog:
    """Ordered records of one turn, and the place where the machines' decisions are acted on."""

    __slots__ = ("records", "transitions", "_on_first", "_on_text", "_on_reasoning")

    def __init__(self, callbacks: Callbacks | None = None) -> None:
        self.records: list[Record] = []
        #: The transition records, numbered (also in `records`).
        self.transitions: list[Transition] = []
        callbacks = callbacks or Callbacks()
        self._on_first = callbacks.on_first_delta
        self._on_text = callbacks.on_text_delta
        self._on_reasoning = callbacks.on_reasoning_delta

    def input(self, attempt: int, item: RecordedInput, t: float | None) -> None:
        """Record one input, before any machine sees it."""
        self.records.append(InputRecord(attempt, t, item))

    def decide(self, decisions: list[Decision]) -> None:
        """Record a machine's decisions, then act on each: callbacks for effects, log lines for
        transitions."""
        records = self.records
        for decision in decisions:
            if isinstance(decision, Effect):
                records.append(decision)
                kind = decision.kind
                if kind == "text_delta":
                    if self._on_text is not None:
                        _fenced(self._on_text, "on_text_delta", decision.data)
                elif kind == "reasoning_delta":
                    if self._on_reasoning is not None:
                        _fenced(self._on_reasoning, "on_reasoning_delta", decision.data)
                elif kind == "first_delta":
                    if self._on_first is not None:
                        _fenced(self._on_first, "on_first_delta")
            else:
                numbered = attrs.evolve(decision, seq=len(records) + 1)
                records.append(numbered)
                self.transitions.append(numbered)
                log.debug(
                    "transition",
                    machine=numbered.machine,
                    attempt=numbered.attempt,
                    source=numbered.source,
                    dest=numbered.dest,
                    trigger=numbered.trigger,
                )


def _fenced(callback: Callable[..., Any], name: str, *args: Any) -> None:
    try:
        callback(*args)
    except Exception as error:
        log.warning("callback raised", callback=name, error=type(error).__name__)
