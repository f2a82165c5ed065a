"""Replay of codex app-server traces: the recorded inputs through today's machines, compared.

The session machine is rebuilt from the header (`config`, and the `session` snapshot the turn
started from), every recorded input (stdout lines, stderr lines, the end of output, the exit,
the turn request, the approval answers, timeouts, interrupts) is fed in order, exactly as the
driver fed it, until the turn ends, and the new log and result are compared with the recorded
ones record by record. Nothing is written and no callback is called: the approval answers are
inputs. The first differing record is the divergence, as for every trace
(`engine.drivers.replay`, which hands app-server traces here by their header's `entry`).
"""

from __future__ import annotations

import os
from typing import Any

from engine.drivers.app_recording import AppTurnRecording
from engine.drivers.replay_report import Divergence, ReplayReport
from engine.log.app_trace import (
    AppTrace,
    app_input_from_json,
    app_normalise,
    app_record_to_json,
    app_result_to_json,
    read_app_trace,
)
from machines.app_session import AppSession

__all__ = ["replay_app", "replay_app_trace", "replayed_app_records"]


def replayed_app_records(trace: AppTrace) -> list[dict[str, Any]]:
    """The records today's machines produce from the trace's inputs (JSON, as a trace holds
    them), the result last when the turn ends."""
    session = AppSession.restore(trace.config, trace.session)
    recording = AppTurnRecording(session, None)
    for record in trace.inputs():
        recording.feed(app_input_from_json(record), record.get("t"))
        if recording.finished:
            break
    out = [app_normalise(app_record_to_json(record, seq))
           for seq, record in enumerate(recording.records, 1)]
    if recording.finished:
        out.append(app_normalise(app_result_to_json(recording.result(), len(out) + 1)))
    return out


def replay_app_trace(trace: AppTrace) -> ReplayReport:
    """Replay an already read app-server trace and compare it record by record."""
    recorded = trace.records
    try:
        replayed = replayed_app_records(trace)
    except Exception as error:  # today's machines cannot take these inputs at all
        return ReplayReport(
            trace.path, len(recorded),
            Divergence(1, recorded[0] if recorded else None,
                       {"raised": f"{type(error).__name__}: {error}"}),
        )
    for index in range(max(len(recorded), len(replayed))):
        mine = recorded[index] if index < len(recorded) else None
        theirs = replayed[index] if index < len(replayed) else None
        if mine != theirs:
            return ReplayReport(trace.path, len(recorded), Divergence(index + 1, mine, theirs))
    return ReplayReport(trace.path, len(recorded), None)


def replay_app(path: str | os.PathLike[str]) -> ReplayReport:
    """Read an app-server trace and replay it (`TraceError` for an unreadable or invalid one)."""
    return replay_app_trace(read_app_trace(path))
