"""Replay: feed a trace's recorded inputs to today's machines and compare every record.

The recorded inputs (chunks with their boundaries, faults, interrupts, clock readings) are fed,
attempt by attempt, exactly as the drivers fed them; the machines decide anew. The new event log
and result are then compared with the recorded ones record by record. A missing, extra,
reordered or altered record is a divergence, reported as the first differing record (seq,
recorded, replayed), the way Temporal's replayer names the first mismatching history event.
"""

from __future__ import annotations

import os
from typing import Any

import attrs

from engine.drivers.recording import TurnRecording
from engine.log.trace import Trace, input_from_json, normalise, read_trace, record_to_json, result_to_json

__all__ = ["Divergence", "ReplayReport", "replay", "replay_trace"]


@attrs.frozen(slots=True)
class Divergence:
    """The first record where a replay differs from the recording: its seq, the recorded record and the replayed one (None where one side has no record)."""
    seq: int
    recorded: dict[str, Any] | None
    replayed: dict[str, Any] | None

    def describe(self) -> str:
        """One line: `seq N: recorded {...}; replayed {...}`."""
        return f"seq {self.seq}: recorded {_show(self.recorded)}; replayed {_show(self.replayed)}"


def _show(record: dict[str, Any] | None) -> str:
    if record is None:
        return "nothing"
    import orjson

    return orjson.dumps(record).decode()


@attrs.frozen(slots=True)
class ReplayReport:
    """The outcome of replaying one trace: its path, how many records it holds, and the first divergence (None when identical)."""
    path: str
    records: int
    divergence: Divergence | None

    @property
    def identical(self) -> bool:
        """True when every replayed record equals the recorded one."""
        return self.divergence is None


def replayed_records(trace: Trace) -> list[dict[str, Any]]:
    """The records today's machines produce from the trace's inputs (JSON, as a trace holds them)."""
    seed = trace.header.get("seed", 0)
    recording = TurnRecording(
        trace.policy,
        None,
        entry=trace.header["entry"],
        request=trace.header.get("request"),
        seed=seed if type(seed) is int else 0,
    )
    inputs: dict[int, list[dict[str, Any]]] = {}
    for record in trace.inputs():
        inputs.setdefault(record["attempt"], []).append(record)
    finished = True
    for feed in recording.attempts():
        for record in inputs.get(feed.number, ()):
            if feed.observe(input_from_json(record), record.get("t")):
                break
        if not feed.final:  # today's machines want more than was recorded
            finished = False
            break
    out = [
        normalise(record_to_json(record, seq)) for seq, record in enumerate(recording.log.records, 1)
    ]
    if finished:
        out.append(normalise(result_to_json(recording.finish(), len(out) + 1)))
    return out


def replay_trace(trace: Trace) -> ReplayReport:
    """Replay an already read trace and compare it record by record."""
    recorded = trace.records
    try:
        replayed = replayed_records(trace)
    except Exception as error:  # today's machines cannot take these inputs at all
        seq = 1
        return ReplayReport(
            trace.path,
            len(recorded),
            Divergence(seq, recorded[0] if recorded else None,
                       {"raised": f"{type(error).__name__}: {error}"}),
        )
    for index in range(max(len(recorded), len(replayed))):
        mine = recorded[index] if index < len(recorded) else None
        theirs = replayed[index] if index < len(replayed) else None
        if mine != theirs:
            return ReplayReport(trace.path, len(recorded), Divergence(index + 1, mine, theirs))
    return ReplayReport(trace.path, len(recorded), None)


def replay(path: str | os.PathLike[str]) -> ReplayReport:
    """Read a trace file and replay it (raises `TraceError` for an unreadable or invalid file)."""
    from engine.log.app_trace import is_app_trace_file

    if is_app_trace_file(path):  # a codex app-server turn: its own inputs and machines
        from engine.drivers.app_replay import replay_app

        return replay_app(path)
    return replay_trace(read_trace(path))
