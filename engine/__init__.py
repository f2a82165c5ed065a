"""streamfsm: streaming Responses-API calls as explicit, recorded, replayable state machines.

    result = engine.run_turn(client, {"model": "gpt-5", "input": "hi"}, trace="trace.jsonl")
    result = engine.consume(raw_sse_bytes)
    with engine.CodexSession() as session:           # a codex app-server subprocess
        result = session.run_turn("hi", trace="turn.jsonl")

The names below are loaded on first use (a module `__getattr__`, PEP 562), so `import engine`
costs next to nothing: every `streamfsm` command and the pytest plugin import this package, and
each needs only its own part of it (a replay never needs the network drivers, a turn never needs
the codex driver).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.drivers.asynchronous import arun_turn
    from engine.drivers.codex import CodexSession
    from engine.drivers.consume import consume
    from engine.drivers.replay import ReplayReport, replay
    from engine.drivers.sync import run_turn
    from engine.log.eventlog import Callbacks
    from engine.log.trace import TraceError
    from machines.app_records import AppTurnResult, ApprovalRequest, ToolCall
    from machines.records import Attempt, RetryNotice, Transition, TurnPolicy, TurnResult

#: Where each public name lives.
_HOMES = {
    "AppTurnResult": "machines.app_records",
    "ApprovalRequest": "machines.app_records",
    "Attempt": "machines.records",
    "Callbacks": "engine.log.eventlog",
    "CodexSession": "engine.drivers.codex",
    "RetryNotice": "machines.records",
    "Transition": "machines.records",
    "TurnPolicy": "machines.records",
    "TurnResult": "machines.records",
    "consume": "engine.drivers.consume",
    "replay": "engine.drivers.replay",
    "ReplayReport": "engine.drivers.replay",
    "arun_turn": "engine.drivers.asynchronous",
    "run_turn": "engine.drivers.sync",
    "ToolCall": "machines.app_records",
    "TraceError": "engine.log.trace",
}

__all__ = [
    "AppTurnResult",
    "ApprovalRequest",
    "Attempt",
    "Callbacks",
    "CodexSession",
    "RetryNotice",
    "Transition",
    "TurnPolicy",
    "TurnResult",
    "consume",
    "replay",
    "ReplayReport",
    "arun_turn",
    "run_turn",
    "ToolCall",
    "TraceError",
]


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use and kept here after."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
