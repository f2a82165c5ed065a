"""The event log: every input a turn saw and every decision its machines made, in one order.

One log serves every protocol (Responses-API stream attempts, codex app-server turns). The
drivers append *input records* (raw chunks with their boundaries, HTTP errors, transport faults,
stdout lines of the app-server, timeouts, interrupts, ..., each with the driver's clock reading)
with `input()`, and the machines' decisions (`Transition` and `Effect` records, returned by
`receive()`) with `decide()`. A record's sequence number is its place in the log (from 1).

`decide()` records the decisions first and only then acts on them, in order: effects that reach
the user are handed to the caller's callbacks, fenced (a raising callback is logged and never
breaks the turn); effects only the driver can carry out (a line to write to the app-server, an
approval to ask for, a subprocess to retire) go to the driver's `act` hook; transitions are
logged through structlog (few per turn). The per-delta records are only appended to a list
(cheap), each list of effects decided together noted where it lies (`effect_runs`, one entry per
network read, not per delta), and rendered in bulk when a trace is written: a run of text
effects at once.

The records are kept only while something needs them (`keep`): a trace to write, a replay
comparing them (it takes them as they come), a test looking at them. A turn without a trace keeps
none, only their count (every record still has its sequence number) and the transitions, which
its result returns: its memory does not grow with the stream.

Two things hear about a turn without being records of it. The caller's `on_retry` is told
before each new attempt (`retry()`, called by the turn loop): a replay decides the same attempts
from the records, so the notice is not one. And an `Observer` (the OpenTelemetry spans of
`engine.log.otel`), when the recording has one, is shown every input and every list of
decisions as the log takes them, the way a structlog processor sees every event: it derives
what it reports from the decisions, and nothing in the drivers calls it.

Which callback an effect reaches is decided once, when the log is made, from the callbacks given
(`_routes`), never by the machines: they decide the same effects whoever listens, so a trace
replays without the callbacks. Commentary (`commentary_delta`) goes to `on_commentary_delta`
when the caller gave one, else to `on_text_delta`, as it did before messages had phases; a
`first_delta` effect that is first under one routing only (its data names it,
`machines.records.FirstDeltaRouting`) reaches `on_first_delta` under that routing only. Refusal
text (`refusal_delta`) goes to `on_refusal_delta` and nowhere else.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Protocol

import attrs

from engine.log.logs import log
from machines.app_records import AppInput
from machines.records import (
    Chunk,
    Decision,
    Effect,
    RetryNotice,
    StreamInput,
    Transition,
)

__all__ = [
    "Callbacks",
    "EventLog",
    "Input",
    "InputRecord",
    "Observer",
    "Record",
    "RecordedInput",
    "announce_retry",
]


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
    gets reasoning and reasoning-summary text. `on_commentary_delta(text)` (v3) gets the text of
    messages labelled `phase: "commentary"`, which then reaches neither `on_text_delta` nor
    `on_first_delta` (without it, commentary is text like any other); `on_refusal_delta(text)`
    (v3) gets refusal text, which never reaches `on_text_delta`; `on_retry(notice)` (v3) hears,
    before each new attempt of a turn (and before each new app-server process after a
    retirement), an `engine.RetryNotice` saying which attempt comes, why, and after what wait. A
    callback that raises is logged and ignored."""

    on_first_delta: Callable[[], Any] | None = attrs.field(default=None, validator=_callable_or_none)
    on_text_delta: Callable[[str], Any] | None = attrs.field(
        default=None, validator=_callable_or_none
    )
    on_reasoning_delta: Callable[[str], Any] | None = attrs.field(
        default=None, validator=_callable_or_none
    )
    on_commentary_delta: Callable[[str], Any] | None = attrs.field(
        default=None, validator=_callable_or_none
    )
    on_refusal_delta: Callable[[str], Any] | None = attrs.field(
        default=None, validator=_callable_or_none
    )
    on_retry: Callable[[RetryNotice], Any] | None = attrs.field(
        default=None, validator=_callable_or_none
    )


#: What a driver records as a stream attempt's input.
RecordedInput = Chunk | StreamInput

#: What a driver records as an input, of any protocol.
Input = RecordedInput | AppInput


@attrs.frozen(slots=True)
class InputRecord:
    """One observation of the outside world, as the driver recorded it for attempt `attempt` (an
    app-server turn: the turn's number in its session); `t` is the driver's monotonic clock,
    seconds since the turn began (None without a clock)."""

    attempt: int
    t: float | None
    input: Input


#: A record of the log; its sequence number is its position (from 1).
Record = InputRecord | Transition | Effect

def _routes(callbacks: Callbacks) -> dict[str, tuple[str, Any]]:
    """The callback each effect kind reaches (by name, for the log line of a raising callback),
    with the `first_delta` data it skips, given which callbacks the caller gave."""
    apart = callbacks.on_commentary_delta is not None
    return {
        "text_delta": ("on_text_delta", None),
        "reasoning_delta": ("on_reasoning_delta", None),
        "refusal_delta": ("on_refusal_delta", None),
        "commentary_delta": ("on_commentary_delta" if apart else "on_text_delta", None),
        # first under the other routing only: not first here
        "first_delta": ("on_first_delta", "commentary_joined" if apart else "commentary_apart"),
    }


class Observer(Protocol):
    """What watches a turn as its event log takes the records (`engine.log.otel`): every input
    and every list of decisions, after they are recorded; the recording tells it how the turn
    ended."""

    def observed(self, attempt: int, item: Input) -> None:
        """An input of `attempt` was recorded."""
        ...

    def decided(self, decisions: list[Decision]) -> None:
        """A machine's decisions were recorded."""
        ...


class EventLog:
    """Ordered records of one turn, and the place where the machines' decisions are acted on.

    `act` is the driver's hook for the effects named in `driver_effects`; the others are only
    recorded (or, for text, commentary, refusals, reasoning and the first delta, handed to the
    callbacks). `observer` is shown every input and decision as it is recorded."""

    __slots__ = ("records", "effect_runs", "transitions", "count", "keep", "observer", "_actions",
                 "_callbacks")

    def __init__(
        self,
        callbacks: Callbacks | None = None,
        act: Callable[[Effect], None] | None = None,
        driver_effects: Iterable[str] = (),
        observer: Observer | None = None,
        *,
        keep: bool = True,
    ) -> None:
        #: The records, in order, when they are kept (`keep`); else always empty.
        self.records: list[Record] = []
        #: Where `records` holds two or more effects decided together with no transition among
        #: them (a network read's text deltas, the usual list of decisions), as `(start, end)`
        #: indices, in order: what the trace writer and replay render as runs of text lines
        #: (`engine.log.trace.text_effect_lines`). One entry per such list, none per record.
        self.effect_runs: list[tuple[int, int]] = []
        #: How many records the log has taken (the sequence number of the latest).
        self.count = 0
        self.keep = keep
        #: The transition records, numbered (also in `records`).
        self.transitions: list[Transition] = []
        self.observer = observer
        callbacks = self._callbacks = callbacks or Callbacks()
        #: what to do for each kind of effect that is acted on
        self._actions: dict[str, Callable[[Effect], None]] = {}
        for kind, (name, skipped) in _routes(callbacks).items():
            callback = getattr(callbacks, name)
            if callback is not None:
                self._actions[kind] = _fenced(
                    callback, name, with_data=kind != "first_delta", skipped=skipped
                )
        if act is not None:
            self._actions.update(dict.fromkeys(driver_effects, act))

    def input(self, attempt: int, item: Input, t: float | None) -> None:
        """Record one input, before any machine sees it."""
        self.count += 1
        if self.keep:
            self.records.append(InputRecord(attempt, t, item))
        if self.observer is not None:
            self.observer.observed(attempt, item)

    def retry(self, notice: RetryNotice) -> None:
        """Tell the caller's `on_retry` that attempt `notice.number` is about to start."""
        announce_retry(self._callbacks, notice)

    def decide(self, decisions: list[Decision]) -> None:
        """Record a machine's decisions (numbering the transitions), then act on each: callbacks
        and the driver's hook for effects, log lines for transitions."""
        numbered: list[Transition] = []
        seq = self.count
        if Transition not in map(type, decisions):  # the usual list: effects only (text)
            seq += len(decisions)
            if self.keep:
                records = self.records
                if len(decisions) > 1:
                    start = len(records)
                    self.effect_runs.append((start, start + len(decisions)))
                records.extend(decisions)
        elif self.keep:
            records = self.records
            for decision in decisions:
                seq += 1
                if type(decision) is Transition:
                    decision = attrs.evolve(decision, seq=seq)
                    numbered.append(decision)
                records.append(decision)
        else:
            for decision in decisions:
                seq += 1
                if type(decision) is Transition:
                    numbered.append(attrs.evolve(decision, seq=seq))
        self.count = seq
        if self.observer is not None:
            self.observer.decided(decisions)
        actions = self._actions
        if not numbered:
            if actions:
                for decision in decisions:
                    action = actions.get(decision.kind)  # type: ignore[union-attr]
                    if action is not None:
                        action(decision)  # type: ignore[arg-type]
            return
        self.transitions.extend(numbered)
        moves = iter(numbered)
        for decision in decisions:
            if type(decision) is Effect:
                action = actions.get(decision.kind)
                if action is not None:
                    action(decision)
            else:
                transition = next(moves)
                log.debug(
                    "transition",
                    machine=transition.machine,
                    attempt=transition.attempt,
                    source=transition.source,
                    dest=transition.dest,
                    trigger=transition.trigger,
                )


def _fenced(
    callback: Callable[..., Any], name: str, *, with_data: bool, skipped: Any = None
) -> Callable[[Effect], None]:
    """The callback for an effect, fenced: an exception it raises is logged and goes no further.
    Without data, the callback is called for effects whose data is not `skipped`."""

    def call(effect: Effect) -> None:
        try:
            if with_data:
                callback(effect.data)
            elif skipped is None or effect.data != skipped:
                callback()
        except Exception as error:
            _callback_raised(name, error)

    return call


def announce_retry(callbacks: Callbacks | None, notice: RetryNotice) -> None:
    """Tell `callbacks.on_retry`, if there is one, that a new attempt is about to start (fenced
    like every callback). Not a record of the turn: a replay decides the same attempts again."""
    callback = callbacks.on_retry if callbacks is not None else None
    if callback is not None:
        try:
            callback(notice)
        except Exception as error:
            _callback_raised("on_retry", error)


def _callback_raised(name: str, error: Exception) -> None:
    log.warning("callback raised", callback=name, error=type(error).__name__)
