"""streamfsm: streaming Responses-API calls as explicit, recorded, replayable state machines.

    result = engine.run_turn(client, {"model": "gpt-5", "input": "hi"}, trace="trace.jsonl")
    result = engine.consume(raw_sse_bytes)
    with engine.CodexSession() as session:           # a codex app-server subprocess
        result = session.run_turn("hi", trace="turn.jsonl")
"""

from engine.drivers.codex import CodexSession
from engine.drivers.consume import consume
from engine.log.eventlog import Callbacks
from engine.drivers.replay import ReplayReport, replay
from engine.drivers.asynchronous import arun_turn
from engine.drivers.sync import run_turn
from engine.log.trace import TraceError
from machines.app_records import AppTurnResult, ApprovalRequest, ToolCall
from machines.records import Attempt, RetryNotice, Transition, TurnPolicy, TurnResult

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
