"""Invariants of the app-server machines, checked on any generated turn (`app_strategies`).

`check_app_script(script)` feeds a script through `AppTurnRecording` exactly as the driver
would (stopping once the turn has ended) and raises `AssertionError` naming the first broken
invariant:

- feeding never raises;
- text is never doubled or invented: what the callbacks got for each agent message is a prefix
  of that message's text, and all of it once the message completed; `on_first_delta` comes at
  most once, before the first text; `output_text` is a prefix of a message's text (the last
  completed message's text, whole, for a completed turn);
- every server request is answered at most once; an approval request is answered exactly once
  when the turn completes with the session alive, unless the server withdrew it first; an
  unknown request gets exactly one JSON-RPC error;
- the outcome follows the ending: `turn/completed` gives its status; the subprocess dying or a
  timeout before it gives "error" and retires the session; an unanswered interrupt gives
  "interrupted" and retires it;
- the recorded turn replays identically (its trace written and replayed, record by record).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import attrs
import orjson

from engine.drivers.app_recording import AppTurnRecording
from engine.drivers.replay import replay
from engine.log.eventlog import Callbacks
from engine.fuzz.app_strategies import AppScript
from machines import app_records
from machines.app_protocol import Request, decode_line
from machines.app_session import AppSession
from machines.records import Effect, EndOfStream, IdleTimeout

__all__ = ["AppRun", "check_app_script", "run_app_script"]

CONFIG = app_records.SessionConfig(cwd="/fuzz")


@attrs.define
class AppRun:
    """What feeding a script produced."""

    recording: AppTurnRecording
    result: app_records.AppTurnResult | None
    fed: int
    delivered: dict[int, list[str]]
    events: list[tuple[str, Any]]


def run_app_script(script: AppScript) -> AppRun:
    """Feed `script` as the driver would; keep what the callbacks got, per agent message."""
    delivered: dict[int, list[str]] = {}
    events: list[tuple[str, Any]] = []
    current = [-1]

    def text(delta: str) -> None:
        delivered.setdefault(current[0], []).append(delta)
        events.append(("text", delta))

    callbacks = Callbacks(on_first_delta=lambda: events.append(("first", None)),
                          on_text_delta=text,
                          on_reasoning_delta=lambda d: events.append(("reasoning", d)))
    recording = AppTurnRecording(AppSession(CONFIG), callbacks)
    fed = 0
    for step in script.steps:
        if recording.finished:
            break
        current[0] = step.message
        recording.feed(step.input, None)
        fed += 1
    result = recording.result() if recording.finished else None
    return AppRun(recording, result, fed, delivered, events)


def _sends(run: AppRun) -> list[dict[str, Any]]:
    return [r.data for r in run.recording.log.records
            if isinstance(r, Effect) and r.kind == "send"]


def check_app_script(script: AppScript) -> AppRun:
    """Run `script` and check every invariant; returns the run."""
    run = run_app_script(script)
    fed = [step.input for step in script.steps[: run.fed]]
    _check_text(script, run)
    _check_answers(script, run, fed)
    _check_outcome(run, fed)
    _check_replay(run)
    return run


def _check_text(script: AppScript, run: AppRun) -> None:
    assert -1 not in run.delivered, f"text delivered outside any message: {run.delivered[-1]}"
    for index, pieces in run.delivered.items():
        shown = "".join(pieces)
        assert script.messages[index].startswith(shown), (
            f"message {index}: delivered {shown!r}, not a prefix of {script.messages[index]!r}")
    kinds = [kind for kind, _ in run.events if kind in ("first", "text")]
    assert kinds.count("first") <= 1, "on_first_delta more than once"
    if "text" in kinds:
        assert kinds[0] == "first", "text before on_first_delta"
    result = run.result
    if result is None:
        return
    if result.output_text:
        assert any(text.startswith(result.output_text) for text in script.messages), (
            f"output_text {result.output_text!r} is no message's text or prefix of it")
    turn = run.recording.session.turn
    assert turn is not None
    for stream in turn.streams:
        if stream.final is not None and not stream.diverged and stream in turn.streams:
            shown = stream.delivery.delivered()
            assert shown == stream.final, f"completed message delivered {shown!r}, not whole"


def _check_answers(script: AppScript, run: AppRun, fed: list[Any]) -> None:
    requests: dict[Any, str] = {}
    withdrawn: set[Any] = set()
    for item in fed:
        if isinstance(item, app_records.ServerLine):
            message = decode_line(item.text)
            if isinstance(message, Request):
                requests.setdefault(message.id, message.method)
            elif '"serverRequest/resolved"' in item.text:
                ident = orjson.loads(item.text)["params"]["requestId"]
                withdrawn.add(ident)
    replies: dict[Any, int] = {}
    for sent in _sends(run):
        if "method" not in sent and "id" in sent:
            replies[sent["id"]] = replies.get(sent["id"], 0) + 1
    for ident, count in replies.items():
        assert count == 1, f"server request {ident} answered {count} times"
    result = run.result
    for ident, method in requests.items():
        if method == "item/tool/call":
            assert replies.get(ident) == 1, f"unknown request {ident} not answered once"
    if result is not None and result.outcome in ("completed", "failed", "interrupted") \
            and not result.retired:
        for ident in script.approvals:
            if ident in requests and ident not in withdrawn:
                assert replies.get(ident) == 1, f"approval {ident} left unanswered"


def _check_outcome(run: AppRun, fed: list[Any]) -> None:
    result = run.result
    if result is None:
        return
    last = fed[-1] if fed else None
    ending = run.recording.session.turn.ending if run.recording.session.turn else None
    assert ending is not None
    if isinstance(
        last, (EndOfStream, app_records.ProcessExit, IdleTimeout, app_records.RequestTimeout)
    ):
        assert result.outcome == "error" and result.retired, (
            f"{type(last).__name__} ended the turn {result.outcome}, retired={result.retired}")
    elif isinstance(last, app_records.InterruptTimeout):
        assert result.outcome == "interrupted" and result.retired
    elif isinstance(last, app_records.ServerLine) and '"turn/completed"' in last.text:
        status = orjson.loads(last.text)["params"]["turn"]["status"]
        assert result.outcome == status, f"turn/completed {status} gave {result.outcome}"
    assert result.retired == run.recording.session.is_retired
    if result.retired:
        assert any(isinstance(r, Effect) and r.kind == "retire" for r in run.recording.log.records)


def _check_replay(run: AppRun) -> None:
    if run.result is None:
        return  # an unfinished turn has no result to compare; its trace would be invalid
    with tempfile.TemporaryDirectory(prefix="streamfsm-app-") as folder:
        path = os.path.join(folder, "turn.jsonl")
        run.recording.finish(path)
        report = replay(path)
    assert report.identical, report.divergence.describe() if report.divergence else ""
