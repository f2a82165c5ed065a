"""`machines.table`: a table is checked when it is built, and fires the first row whose guards
hold. Each machine's own rules are tested in its own test file; here, the mechanism."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import pytest
from transitions import MachineError

from machines import app_session, app_turn, stream_attempt, turn
from machines.table import Row, Table, TableError


class S(StrEnum):
    IDLE = "idle"
    BUSY = "busy"
    DONE = "done"


class T(StrEnum):
    GO = "go"
    TICK = "tick"
    STOP = "stop"


class Toy:
    def __init__(self) -> None:
        self.state = S.IDLE
        self.ready = True
        self.moves: list[tuple[str, str, str]] = []
        self.ticks = 0

    def _moved(self, row: Row[Any, Any], source: S) -> None:
        self.moves.append((source.value, row.dest.value, row.label))


def is_ready(toy: Toy) -> bool:
    return toy.ready


def count(toy: Toy) -> None:
    toy.ticks += 1


ROWS: list[Row[Toy, str]] = [
    Row(T.GO, S.IDLE, S.BUSY, guards=is_ready, decides="started"),
    Row(T.GO, S.IDLE),
    Row(T.TICK, S.BUSY, then=count),
    Row(T.TICK, S.IDLE),
    Row(T.STOP, (S.IDLE, S.BUSY), S.DONE, name="finish"),
]


def table(rows: list[Row[Toy, str]] = ROWS) -> Table[Toy, str]:
    return Table("toy", S, T, rows, initial=S.IDLE, final={S.DONE})


def test_the_first_row_whose_guards_hold_fires_and_is_returned() -> None:
    toy = Toy()
    fired = table().fire(toy, T.GO)
    assert fired.decides == "started" and toy.state is S.BUSY
    assert toy.moves == [("idle", "busy", "go")]
    toy = Toy()
    toy.ready = False
    fired = table().fire(toy, T.GO)
    assert fired.dest is None and toy.state is S.IDLE and toy.moves == []


def test_a_stay_with_an_action_runs_it_and_a_named_row_is_recorded_by_its_name() -> None:
    toy = Toy()
    built = table()
    built.fire(toy, T.GO)
    built.fire(toy, T.TICK)
    built.fire(toy, T.TICK)
    assert toy.ticks == 2 and toy.state is S.BUSY
    built.fire(toy, T.STOP)
    assert toy.moves[-1] == ("busy", "done", "finish")
    assert (S.IDLE, T.TICK) in built.stays and (S.BUSY, T.TICK) not in built.stays


def test_feed_skips_the_stays_that_change_nothing_and_fires_the_rest() -> None:
    toy = Toy()
    built = table()
    calls: list[StrEnum] = []
    fire = built.fire

    def counted_fire(machine: Toy, trigger: StrEnum) -> Row[Toy, str]:
        calls.append(trigger)
        return fire(machine, trigger)

    built.fire = counted_fire  # type: ignore[method-assign]
    built.feed(toy, T.TICK)  # an unguarded stay in idle: not fired at all
    assert calls == [] and toy.moves == []
    built.feed(toy, T.GO)
    built.feed(toy, T.TICK)  # a stay with an action in busy: fired, the action runs
    assert calls == [T.GO, T.TICK] and toy.state is S.BUSY and toy.ticks == 1
    built.feed(toy, T.STOP)
    with pytest.raises(MachineError):
        built.feed(toy, T.TICK)


def test_select_looks_without_changing_anything() -> None:
    toy = Toy()
    row = table().select(toy, T.GO)
    assert row.dest is S.BUSY and toy.state is S.IDLE and toy.moves == []


def test_an_input_with_no_row_raises_and_takes_says_so() -> None:
    toy = Toy()
    built = table()
    built.fire(toy, T.STOP)
    assert not built.takes(S.DONE, T.TICK) and built.takes(S.BUSY, T.TICK)
    with pytest.raises(MachineError):
        built.fire(toy, T.TICK)


@pytest.mark.parametrize(
    ("rows", "words"),
    [
        (ROWS[:-1], "triggers with no row: stop"),
        ([*ROWS[:2], Row(T.TICK, S.BUSY, guards=is_ready), *ROWS[3:]], "busy/tick"),
        ([Row(T.GO, S.IDLE, S.BUSY), *ROWS], "never fires in 'idle'"),
        ([*ROWS, Row(T.GO, S.DONE, S.IDLE)], "leaves the final states"),
        (ROWS[1:], "states no row reaches: busy"),
        ([*ROWS, Row(stream_attempt.Trigger.CREATED, S.IDLE)], "not one of its triggers"),
        ([*ROWS, Row(T.TICK, stream_attempt.State.STREAMING)], "is not a set of its states"),
        ([*ROWS[:-1], Row(T.STOP, (S.IDLE, S.BUSY), S.DONE, guards="is_ready")], "not callable"),  # type: ignore[arg-type]
    ],
)
def test_a_table_that_is_not_well_formed_is_refused_when_built(rows: list[Row[Toy, str]], words: str) -> None:
    with pytest.raises(TableError, match=words.replace("(", r"\(")):
        table(rows)


@pytest.mark.parametrize("machine", [stream_attempt, turn, app_session, app_turn])
def test_every_guard_is_a_named_function_of_its_module(machine: Any) -> None:
    """Guards are functions (mypy and the diagram see them), defined beside the table."""
    for row in machine.TABLE.rows:
        for guard in row.guards:
            assert getattr(machine, guard.__name__) is guard, row.label
