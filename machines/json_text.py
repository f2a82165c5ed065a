"""Server JSON read and written the same way whatever the interpreter's recursion limit.

The machines read each event with orjson, which accepts any JSON nested up to 1024 levels and
needs no Python recursion. What orjson refuses but the standard library reads (numbers beyond a
double such as `1e999`, `NaN`, escaped lone surrogates) is read with `json`, whose C scanner
recurses once per level against the interpreter's recursion limit: left alone, the same event
would be read under a raised limit (as Hypothesis raises it while a test runs, or an application
that needs it) and refused at the default one, and a trace recorded in one would not replay in
the other. So here:

- `lenient_loads` refuses JSON nested deeper than `MAX_DEPTH` (orjson's own limit) before
  reading it, and reads the rest with enough recursion room for `MAX_DEPTH` levels, whatever
  the stack's depth;
- `sorted_json_text` writes a value (at most `MAX_DEPTH` deep, as read) with the same room.

The room is a temporary raise of the recursion limit, taken under a lock so that two threads
never lower it under each other.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import threading
from typing import Any, Final, Iterator

__all__ = [
    "MAX_DEPTH",
    "lenient_loads",
    "nests_deeper_than",
    "recursion_room",
    "sorted_json_text",
]

#: The deepest nesting read (orjson reads up to 1024 levels and refuses more).
MAX_DEPTH: Final = 1024
#: Frames a JSON reader or writer needs besides one per level.
_MARGIN: Final = 64

_ROOM = threading.Lock()
_TOKENS: Final = re.compile(r'\\.|["\[\]{}]', re.DOTALL)
_STEPS: Final = {"[": 1, "{": 1, "]": -1, "}": -1}


@contextlib.contextmanager
def recursion_room(levels: int = MAX_DEPTH + _MARGIN) -> Iterator[None]:
    """At least `levels` frames of recursion left for the block, whatever the stack's depth."""
    with _ROOM:
        before = sys.getrecursionlimit()
        sys.setrecursionlimit(before + levels)
        try:
            yield
        finally:
            sys.setrecursionlimit(before)


def nests_deeper_than(text: str, levels: int = MAX_DEPTH) -> bool:
    """Whether JSON text nests lists and objects more than `levels` deep (brackets inside
    strings do not count), in time linear in its length."""
    if text.count("[") + text.count("{") <= levels:
        return False
    depth = 0
    inside = False
    for token in _TOKENS.findall(text):
        if token == '"':
            inside = not inside
        elif not inside and len(token) == 1:
            depth += _STEPS[token]
            if depth > levels:
                return True
    return False


def _value_deeper_than(value: Any, levels: int = MAX_DEPTH) -> bool:
    """Whether lists and dicts nest more than `levels` deep in `value` (without recursion)."""
    work: list[tuple[Any, int]] = [(value, 0)]
    while work:
        item, depth = work.pop()
        if isinstance(item, dict):
            item = list(item.values())
        elif not isinstance(item, (list, tuple)):
            continue
        if depth + 1 > levels:
            return True
        work.extend((inner, depth + 1) for inner in item)
    return False


def lenient_loads(data: str) -> Any:
    """What the standard library's JSON reader makes of data orjson refuses, or None when it is
    not JSON at all or nests deeper than `MAX_DEPTH`: the same answer at any recursion limit."""
    if nests_deeper_than(data):
        return None
    try:
        with recursion_room():
            return json.loads(data)
    except (ValueError, RecursionError):
        return None


def sorted_json_text(value: Any) -> str:
    """`value` as compact ASCII JSON with sorted keys, or "" for a value JSON cannot hold or
    one nested deeper than `MAX_DEPTH`: the same text at any recursion limit."""
    if _value_deeper_than(value):
        return ""
    try:
        with recursion_room():
            return json.dumps(value, separators=(",", ":"), sort_keys=True)
    except (TypeError, ValueError, RecursionError):
        return ""
