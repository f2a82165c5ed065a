"""Building one `transitions.Machine` from a machine's transition table (shared by every machine).

Every machine in `machines/` declares its states and a `TABLE` of rows (dicts with `trigger`,
`source`, `dest`, optional `conditions`, and keys of its own such as `outcome`). `definition()`
turns them into the one `transitions.Machine` that serves every instance of that machine: the
machine is built once, at import, with no model; an instance (any object with a `state`
attribute) is driven by `events[trigger].trigger(instance)`. The rules it applies:

- a row whose `dest` is None is a *stay*: the trigger is valid there and changes nothing; when
  the first row for a (state, trigger) pair is an unconditional stay, the pair is listed in the
  returned `stays`, so the hot path can skip the `transitions` call altogether;
- a row that changes the state calls `instance._moved(row, source)` before the row's own `after`
  callbacks: the instance records the transition (and reads the row's own keys) there;
- keys a row has for its machine alone (`own_keys`) are not passed to `transitions`;
- invalid triggers raise `transitions.MachineError` (never silently ignored).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

from transitions import Machine

__all__ = ["definition", "sources"]


def sources(row: dict[str, Any]) -> list[str]:
    """The source states of a row (a single name or a list)."""
    source = row["source"]
    return [source] if isinstance(source, str) else list(source)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _row_fired(row: dict[str, Any], event: Any) -> None:
    event.model._moved(row, event.transition.source)


def definition(
    states: Sequence[Any],
    table: Iterable[dict[str, Any]],
    initial: str,
    own_keys: Iterable[str] = (),
) -> tuple[Machine, frozenset[tuple[str, str]]]:
    """The one `transitions.Machine` for `table`, and its unconditional stays (see above)."""
    machine = Machine(
        model=None,
        states=list(states),
        initial=initial,
        auto_transitions=False,
        send_event=True,
        ignore_invalid_triggers=False,
    )
    ours = frozenset(own_keys)
    stays: set[tuple[str, str]] = set()
    seen: set[tuple[str, str]] = set()
    for row in table:
        spec = {key: value for key, value in row.items() if key not in ours}
        if row["dest"] is not None:  # recorded first, then the row's own `after` callbacks
            spec["after"] = [functools.partial(_row_fired, row), *_as_list(row.get("after"))]
        machine.add_transition(**spec)
        for source in sources(row):
            pair = (source, row["trigger"])
            if pair not in seen and row["dest"] is None and not row.get("conditions"):
                stays.add(pair)
            seen.add(pair)
    return machine, frozenset(stays)
