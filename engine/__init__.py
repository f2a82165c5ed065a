"""streamfsm: streaming Responses-API calls as explicit, recorded, replayable state machines.

    result = engine.run_turn(client, {"model": "gpt-5", "input": "hi"}, trace="trace.jsonl")
    result = engine.consume(raw_sse_bytes)
"""

from engine.drivers.consume import consume
from engine.log.eventlog import Callbacks
from engine.drivers.replay import ReplayReport, replay
from engine.drivers.asynchronous import arun_turn
from engine.drivers.sync import run_turn
from engine.log.trace import TraceError
from machines.records import Attempt, Transition, TurnPolicy, TurnResult

__all__ = [
    "Attempt",
    "Callbacks",
    "Transition",
    "TurnPolicy",
    "TurnResult",
    "consume",
    "replay",
    "ReplayReport",
    "arun_turn",
    "run_turn",
    "TraceError",
]
