"""The event log: every input a turn saw and every decision its machines made, in one order.

The drivers append *input records* (raw chunks with their boundaries, HTTP errors, transport
faults, end of stream, idle timeouts, interrupts, each with the driver's clock reading); the
machines append *transitions* and *effects* through the `AttemptSink` interface. Every record gets
the next sequence number. Effects that reach the user are handed to the caller's callbacks here,
fenced: a raising callback is logged and never breaks the turn.

Transitions are logged through structlog as they happen (few per turn); the per-delta records are
only appended to a list (cheap) and rendered in bulk when a trace is written.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import attrs

from engine.log.logs import log
from machines.records import (
    Chunk,
    EffectKind,
    EndOfStream,
    HttpError,
    IdleTimeout,
    Interrupt,
    Transition,
    TransportFault,
)

__all__ = ["Callbacks", "Chunk", "InputRecord", "EffectRecord", "EventLog", "Record"]


def _callable_or_none(instance: Any, attribute: Any, value: Any) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"Callbacks.{attribute.name} must be callable or None, not {type(value).__name__}")


@attrs.frozen(slots=True)
class Callbacks:
    """What the caller wants to hear while a turn streams. Every field is optional."""

    on_first_delta: Callable[[], Any] | None = attrs.field(default=None, validator=_callable_or_none)
    on_text_delta: Callable[[str], Any] | None = attrs.field(default=None, validator=_callable_or_none)
    on_reasoning_delta: Callable[[str], Any] | None = attrs.field(
        default=None, validator=_callable_or_none
    )


RecordedInput = Chunk | HttpError | TransportFault | EndOfStream | IdleTimeout | Interrupt


@attrs.frozen(slots=True)
class InputRecord:
    seq: int
    attempt: int
    t: float | None  # the driver's monotonic clock, seconds since the turn began
    input: RecordedInput


@attrs.frozen(slots=True)
class EffectRecord:
    seq: int
    attempt: int
    kind: EffectKind
    data: Any = None


Record = InputRecord | Transition | EffectRecord


class EventLog:
    """Ordered records of one turn; also the sink its machines write to."""

    __slots__ = ("records", "_on_first", "_on_text", "_on_reasoning")

    def __init__(self, callbacks: Callbacks | None = None) -> None:
        self.records: list[Record] = []
        callbacks = callbacks or Callbacks()
        self._on_first = callbacks.on_first_delta
        self._on_text = callbacks.on_text_delta
        self._on_reasoning = callbacks.on_reasoning_delta

    def input(self, attempt: int, item: RecordedInput, t: float | None) -> None:
        records = self.records
        records.append(InputRecord(len(records) + 1, attempt, t, item))

    def transition(self, machine: str, attempt: int, source: str, dest: str, trigger: str) -> Transition:
        records = self.records
        record = Transition(machine, attempt, source, dest, trigger, len(records) + 1)
        records.append(record)
        log.debug(
            "transition", machine=machine, attempt=attempt, source=source, dest=dest, trigger=trigger
        )
        return record

    def effect(self, kind: EffectKind, attempt: int, data: Any = None) -> None:
        records = self.records
        records.append(EffectRecord(len(records) + 1, attempt, kind, data))
        if kind == "text_delta":
            if self._on_text is not None:
                self._call(self._on_text, "on_text_delta", data)
        elif kind == "reasoning_delta":
            if self._on_reasoning is not None:
                self._call(self._on_reasoning, "on_reasoning_delta", data)
        elif kind == "first_delta":
            if self._on_first is not None:
                self._call(self._on_first, "on_first_delta")

    @staticmethod
    def _call(callback: Callable[..., Any], name: str, *args: Any) -> None:
        try:
            callback(*args)
        except Exception:
            error = sys.exc_info()[1]
            log.warning("callback raised", callback=name, error=type(error).__name__)
