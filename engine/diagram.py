"""Mermaid `stateDiagram-v2` text generated from a machine's transition table (never hand-written).

Each row that changes the state is an edge labelled with the row's name and its guards (the
guard functions' names); stays (rows that keep the state) are not drawn, except in the machines
of `NOTED_STAYS`: the codex app-server machines, where much of the protocol is stays (usage and
compaction reports, a steer and its answer, a client tool asked for again, `turn/completed`
lines that end nothing), list each state's stays in a note beside it.
"""

from __future__ import annotations

from typing import Any

from machines import app_session, app_turn, stream_attempt, turn
from machines.table import Row, Table

__all__ = ["MACHINES", "NOTED_STAYS", "mermaid"]

#: Every machine's table, by name.
MACHINES: dict[str, Table[Any, Any]] = {
    "stream_attempt": stream_attempt.TABLE,
    "turn": turn.TABLE,
    "app_session": app_session.TABLE,
    "app_turn": app_turn.TABLE,
}


#: The machines whose diagrams list each state's stays in a note.
NOTED_STAYS = frozenset({"app_session", "app_turn"})


def _label(row: Row[Any, Any]) -> str:
    guards = [guard.__name__ for guard in row.guards]
    return row.label + (f" [{' and '.join(guards)}]" if guards else "")


def mermaid(name: str) -> str:
    """The named machine's table as a Mermaid state diagram."""
    if name not in MACHINES:
        raise ValueError(f"unknown machine {name!r}; choose one of: {', '.join(MACHINES)}")
    table = MACHINES[name]
    edges: dict[tuple[str, str], list[str]] = {}
    for row in table.rows:
        if row.dest is None:  # a stay: the trigger is valid there and changes nothing
            continue
        label = _label(row)
        for source in sorted(row.source, key=list(table.states).index):
            labels = edges.setdefault((source.value, row.dest.value), [])
            if label not in labels:
                labels.append(label)
    lines = ["stateDiagram-v2", f"    [*] --> {table.initial.value}"]
    for state in table.states:  # keep the states' declared order
        for (source_name, dest), labels in edges.items():
            if source_name == state.value:
                lines.append(f"    {source_name} --> {dest}: {', '.join(labels)}")
    lines.extend(f"    {state.value} --> [*]" for state in table.states if state in table.final)
    if name in NOTED_STAYS:
        for state in table.states:
            stays: list[str] = []
            for row in table.rows:
                if row.dest is None and state in row.source and _label(row) not in stays:
                    stays.append(_label(row))
            if stays:
                lines.append(f"    note right of {state.value}: stays on {', '.join(stays)}")
    return "\n".join(lines) + "\n"
