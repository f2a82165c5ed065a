"""Transition tables as typed data: the one way every machine in `machines/` states its rules.

A machine declares its states and triggers as string enums (`StrEnum`: a member's value is the
name a trace records and the diagram prints; an input is its own trigger, under its vocabulary
name: `Fault.DROP`, `InputKind.EOF`, ...) and a `Table` of `Row`s:

    Row(Fault.DROP, LIVE, State.FALLBACK, guards=hands_over_to_fallback,
        decides=EndingRule(Outcome.ERROR, retry=Budget.STREAM))

reads: a dropped connection, in any live state, when `hands_over_to_fallback(attempt)` holds,
moves the attempt to `fallback`, and the attempt ends with that decision. The parts:

- `trigger`, `source` (one state or several), `dest` (None: a *stay*: the trigger is valid there
  and the state does not change);
- `guards`: the conditions, as the functions themselves (pure predicates of the machine), so a
  type checker sees each one and the diagram prints its `__name__`; all must hold;
- `decides`: what the row decides besides the next state, as the machine's own typed record
  (how an attempt ends, which attempt a turn opens next, ...): the machine reads it off the row
  that fired and never looks at the row's name or the state to decide;
- `then`: an action of the machine run after the row fired (rare; it keeps the row's effect in
  the row);
- `name`: how the diagram and the trace call a row whose trigger is shared (the turn's
  `attempt_ended` rows are `http_retry`, `fall_back`, `resume`, `retry`, `finish`).

Rows are tried in order; the first whose guards all hold fires. `Table.fire(machine, trigger)`
applies it and returns it; `Table.feed(machine, trigger)`, how a machine takes each input, does
the same but skips the stays that change nothing. A trigger with no row for the current state
raises `transitions.MachineError`: an impossible input is a bug, never silently dropped.

The table is checked when it is built (`TableError`, naming the row): every row speaks of this
machine's states and triggers, every guard is callable, every trigger has a row, every state is
reachable from the initial one, no row hides behind an unguarded row for the same state and
trigger, every (state, trigger) pair a row names ends with an unguarded row (so no input can find
no row), and no row leaves a final state.

`transitions` holds the machine: every row that changes the state is one of its transitions, and
it performs each move (it checks the source and sets the machine's `state`). Selecting the row
(ordered rows, typed guards) is done here, so each move is one `transitions` call with nothing
left to evaluate; stays never reach it (most inputs of a stream are stays: text deltas), which
keeps the hot path a dictionary lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from enum import StrEnum
from typing import Any, Generic, Protocol, TypeVar

import attrs
from transitions import Machine, MachineError

__all__ = ["MachineError", "Row", "StateMachine", "Table", "TableError"]


class StateMachine(Protocol):
    """What a table drives: an object with a `state`."""

    state: Any


M = TypeVar("M", bound=StateMachine)
D = TypeVar("D")


class TableError(ValueError):
    """A transition table that is not well formed (raised when the table is built)."""


def _state_set(value: StrEnum | Iterable[StrEnum]) -> frozenset[StrEnum]:
    if isinstance(value, StrEnum):
        return frozenset({value})
    return frozenset(value)


def _guard_tuple(value: Callable[[Any], bool] | Iterable[Callable[[Any], bool]]) -> tuple[Callable[[Any], bool], ...]:
    if callable(value):
        return (value,)
    return tuple(value)


@attrs.frozen(slots=True, eq=False)
class Row(Generic[M, D]):
    """One rule of a machine (see the module docstring)."""

    trigger: StrEnum
    source: frozenset[StrEnum] = attrs.field(converter=_state_set)
    dest: StrEnum | None = None
    guards: tuple[Callable[[M], bool], ...] = attrs.field(default=(), converter=_guard_tuple)
    decides: D | None = None
    then: Callable[[M], None] | None = None
    name: str | None = None

    @property
    def label(self) -> str:
        """The row's name: `name`, else its trigger's value."""
        return self.name if self.name is not None else str(self.trigger.value)

    def holds(self, machine: M) -> bool:
        """Every guard holds for `machine`."""
        for guard in self.guards:
            if not guard(machine):
                return False
        return True


class Table(Generic[M, D]):
    """A machine's rows, checked and compiled (see the module docstring).

    `machine` is the machine's name (the `machine` field of its transition records); `states`
    its states' enum; `triggers` every trigger it takes (enum members: its own, and the inputs it
    takes under their vocabulary names, `machines.records`); `initial` its first state; `final`
    the states it ends in."""

    def __init__(
        self,
        machine: str,
        states: type[StrEnum],
        triggers: Iterable[StrEnum],
        rows: Sequence[Row[M, D]],
        *,
        initial: StrEnum,
        final: Iterable[StrEnum] = (),
    ) -> None:
        self.machine = machine
        self.states = states
        self.triggers: tuple[StrEnum, ...] = tuple(triggers)
        self.rows: tuple[Row[M, D], ...] = tuple(rows)
        self.initial = initial
        self.final = frozenset(final)
        self._check()
        engine = Machine(
            model=None,
            states=list(states),
            initial=initial,
            auto_transitions=False,
            send_event=False,
            ignore_invalid_triggers=False,
        )
        by_pair: dict[tuple[StrEnum, StrEnum], list[tuple[Row[M, D], Callable[[M], bool] | None]]] = {}
        for index, row in enumerate(self.rows):
            move: Callable[[M], bool] | None = None
            if row.dest is not None:
                name = f"{row.trigger.value}#{index}"
                engine.add_transition(name, list[Any](sorted(row.source)), row.dest)
                move = engine.events[name].trigger
            for state in row.source:
                by_pair.setdefault((state, row.trigger), []).append((row, move))
        self._engine = engine
        self._by_pair = {pair: tuple(rows) for pair, rows in by_pair.items()}
        #: (state, trigger) pairs whose first row is an unguarded stay with no action: firing
        #: them changes nothing, so the hot path can skip `fire` altogether.
        self.stays: frozenset[tuple[StrEnum, StrEnum]] = frozenset(
            pair
            for pair, found in self._by_pair.items()
            if found[0][0].dest is None and not found[0][0].guards and found[0][0].then is None
        )

    # -- checking ------------------------------------------------------------------------------
    def _check(self) -> None:
        states, triggers = set(self.states), set(self.triggers)
        if self.initial not in states:
            raise TableError(f"{self.machine}: initial state {self.initial!r} is not a state")
        if not self.final <= states:
            raise TableError(f"{self.machine}: final states {sorted(self.final - states)} are not states")
        seen: dict[tuple[StrEnum, StrEnum], Row[M, D]] = {}
        covered: dict[tuple[StrEnum, StrEnum], bool] = {}
        for index, row in enumerate(self.rows):
            where = f"{self.machine} row {index} ({row.label})"
            if row.trigger not in triggers:
                raise TableError(f"{where}: {row.trigger!r} is not one of its triggers")
            if not row.source or not row.source <= states:
                raise TableError(f"{where}: source {sorted(row.source)} is not a set of its states")
            if row.dest is not None and row.dest not in states:
                raise TableError(f"{where}: destination {row.dest!r} is not one of its states")
            if row.dest is not None and row.source & self.final:
                raise TableError(f"{where}: a row leaves the final states {sorted(row.source & self.final)}")
            for guard in row.guards:
                if not callable(guard):
                    raise TableError(f"{where}: guard {guard!r} is not callable")
            if row.then is not None and not callable(row.then):
                raise TableError(f"{where}: then {row.then!r} is not callable")
            for state in row.source:
                pair = (state, row.trigger)
                if covered.get(pair):
                    raise TableError(
                        f"{where}: never fires in {state.value!r}: an unguarded row for "
                        f"{row.trigger.value!r} comes first ({seen[pair].label})"
                    )
                seen[pair] = row
                covered[pair] = not row.guards
        unhandled = sorted(t.value for t in triggers if not any(r.trigger is t for r in self.rows))
        if unhandled:
            raise TableError(f"{self.machine}: triggers with no row: {', '.join(unhandled)}")
        open_pairs = sorted(f"{s.value}/{t.value}" for (s, t), done in covered.items() if not done)
        if open_pairs:
            raise TableError(
                f"{self.machine}: these state/trigger pairs end with a guarded row, so an input "
                f"can find no row: {', '.join(open_pairs)}"
            )
        reached = {self.initial}
        frontier = [self.initial]
        while frontier:
            state = frontier.pop()
            for row in self.rows:
                if state in row.source and row.dest is not None and row.dest not in reached:
                    reached.add(row.dest)
                    frontier.append(row.dest)
        unreachable = sorted(s.value for s in states - reached)
        if unreachable:
            raise TableError(f"{self.machine}: states no row reaches: {', '.join(unreachable)}")

    # -- firing --------------------------------------------------------------------------------
    def select(self, machine: M, trigger: StrEnum) -> Row[M, D]:
        """The row `trigger` fires in `machine`'s state now (nothing is changed); raises
        `MachineError` when there is none."""
        for row, _ in self._by_pair.get((machine.state, trigger), ()):
            if row.holds(machine):
                return row
        raise MachineError(f"{self.machine}: no row for {trigger.value!r} in {machine.state!r}")

    def fire(self, machine: M, trigger: StrEnum) -> Row[M, D]:
        """Fire `trigger`: the first row whose guards hold is applied (a move through
        `transitions`, then `machine._moved(row, source)` records it; then the row's `then`),
        and returned. Raises `MachineError` when no row takes the trigger in this state."""
        source = machine.state
        for row, move in self._by_pair.get((source, trigger), ()):
            if row.holds(machine):
                if move is not None:
                    move(machine)
                    machine._moved(row, source)  # type: ignore[attr-defined]
                if row.then is not None:
                    row.then(machine)
                return row
        raise MachineError(f"{self.machine}: no row for {trigger.value!r} in {source!r}")

    def feed(self, machine: M, trigger: StrEnum) -> None:
        """Take `trigger` in `machine`: `fire` it, unless it is one of the `stays` there (an
        unguarded stay with no action changes nothing). Most inputs of a stream are such stays
        (text deltas), so they cost one set lookup; this is how a machine takes its inputs."""
        if (machine.state, trigger) not in self.stays:
            self.fire(machine, trigger)

    def staying(self, trigger: StrEnum) -> frozenset[StrEnum]:
        """The states in which `trigger` is one of the `stays`: a machine's hottest input can
        test `machine.state in these` where it would call `feed` (the same decision, no call)."""
        return frozenset(state for state, each in self.stays if each is trigger)

    def takes(self, state: StrEnum, trigger: StrEnum) -> bool:
        """Whether some row takes `trigger` in `state` (the table's word on whether an input is
        taken at all there)."""
        return (state, trigger) in self._by_pair
