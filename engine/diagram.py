"""Mermaid `stateDiagram-v2` text generated from a machine's transition table (never hand-written)."""

from __future__ import annotations

from typing import Any

from machines import app_session, app_turn, stream_attempt, turn

__all__ = ["MACHINES", "mermaid"]

#: name -> (states, table, initial state, final states)
MACHINES: dict[str, tuple[list[str], list[dict[str, Any]], str, frozenset[str]]] = {
    "stream_attempt": (
        stream_attempt.STATES,
        stream_attempt.TABLE,
        stream_attempt.AWAITING_CREATED,
        stream_attempt.FINAL,
    ),
    "turn": (turn.STATES, turn.TABLE, turn.IDLE, frozenset({turn.FINISHED})),
    "app_session": (
        app_session.STATES,
        app_session.TABLE,
        app_session.SPAWNED,
        frozenset({app_session.RETIRED}),
    ),
    "app_turn": (app_turn.STATES, app_turn.TABLE, app_turn.QUEUED, app_turn.FINAL),
}


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _label(row: dict[str, Any]) -> str:
    guards = _as_list(row.get("conditions")) + [f"not {u}" for u in _as_list(row.get("unless"))]
    name: str = row.get("name", row["trigger"])
    return name + (f" [{' and '.join(guards)}]" if guards else "")


def mermaid(name: str) -> str:
    """The named machine's table as a Mermaid state diagram."""
    if name not in MACHINES:
        raise ValueError(f"unknown machine {name!r}; choose one of: {', '.join(MACHINES)}")
    states, table, initial, final = MACHINES[name]
    edges: dict[tuple[str, str], list[str]] = {}
    for row in table:
        if row["dest"] is None:  # a stay: the trigger is valid there and changes nothing
            continue
        for source in _as_list(row["source"]):
            label = _label(row)
            labels = edges.setdefault((source, row["dest"]), [])
            if label not in labels:
                labels.append(label)
    lines = ["stateDiagram-v2", f"    [*] --> {initial}"]
    for state in states:  # keep the states' declared order
        for (source, dest), labels in edges.items():
            if source == state:
                lines.append(f"    {source} --> {dest}: {', '.join(labels)}")
    lines.extend(f"    {state} --> [*]" for state in states if state in final)
    return "\n".join(lines) + "\n"
