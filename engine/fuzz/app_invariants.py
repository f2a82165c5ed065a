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
- client tools: the tool handler is asked once per call id, for the first request of that call
  id; every request for one call id gets the same answer; a handler that failed is never
  answered as a success; a request is answered once when the turn completes with the session
  alive, unless the server withdrew it; the result lists each call asked of the handler, once,
  in order;
- usage: `model_requests` counts the turn's usage reports, and `usage` is the last report's
  thread total and last request, the turn's own counts being the thread's total less what the
  thread had before the turn (the first report's total less its last request);
- the outcome follows the ending: `turn/completed` gives its status (after the turn's time ran
  out, an interrupted end is "completed" or "error" `turn_timeout`); the subprocess dying or a
  timeout before it gives "error" and retires the session; an unanswered interrupt gives
  "interrupted" and retires it; the caller closing the session gives "error" `session_closed`
  and retires it; a `turn/completed` for another turn or thread, or without a status, never
  ends the turn;
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
from engine.fuzz.app_strategies import CONFIG, AppScript
from machines import app_records
from machines.app_protocol import (
    APPROVAL_METHODS,
    TOOL_CALL_METHOD,
    Notification,
    Request,
    decode_line,
    usage_breakdown,
)
from machines.app_session import AppSession
from machines.records import Effect, EndOfStream, IdleTimeout, Interrupt

__all__ = ["AppRun", "check_app_script", "run_app_script"]


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
    _check_tools(script, run, fed)
    _check_usage(run, fed)
    _check_outcome(script, run, fed)
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
        if method not in APPROVAL_METHODS and method != TOOL_CALL_METHOD:
            assert replies.get(ident) == 1, f"unknown request {ident} not answered once"
    if result is not None and result.outcome in ("completed", "failed", "interrupted") \
            and not result.retired:
        for ident in script.approvals:
            if ident in requests and ident not in withdrawn:
                assert replies.get(ident) == 1, f"approval {ident} left unanswered"


def _check_tools(script: AppScript, run: AppRun, fed: list[Any]) -> None:
    call_of: dict[int | str, str] = dict(script.tool_requests)
    asked = [r.data for r in run.recording.log.records
             if isinstance(r, Effect) and r.kind == "call_tool"]
    asked_calls = [data["call_id"] for data in asked]
    assert len(asked_calls) == len(set(asked_calls)), f"a call id asked twice: {asked_calls}"
    requested = [message.id for item in fed if isinstance(item, app_records.ServerLine)
                 and isinstance(message := decode_line(item.text), Request)
                 and message.method == TOOL_CALL_METHOD]
    for data in asked:  # the first request of its call id
        first = next(ident for ident in requested if call_of.get(ident) == data["call_id"])
        assert data["request_id"] == first, f"call {data['call_id']} asked for request {first}"
    answers: dict[Any, Any] = {}
    for sent in _sends(run):
        if sent.get("id") in call_of and "result" in sent:
            answers.setdefault(call_of[sent["id"]], []).append(sent["result"])
    for call_id, results in answers.items():
        assert all(r == results[0] for r in results), f"call {call_id} answered differently"
    # a success carries a handler's successful text, a failure never does (a handler that
    # raised, or the turn answering for one that never did, is a failure)
    succeeded = {item.text for item in fed if isinstance(item, app_records.ToolAnswer)
                 and item.success}
    for results in answers.values():
        for answer in results:
            (content,) = answer["contentItems"]
            assert (content["text"] in succeeded) == answer["success"], (
                f"tool answered {answer}")
    if run.result is not None:
        assert [call.call_id for call in run.result.tool_calls] == asked_calls
        if run.result.outcome in ("completed", "failed", "interrupted") and not run.result.retired:
            withdrawn = {orjson.loads(item.text)["params"]["requestId"] for item in fed
                         if isinstance(item, app_records.ServerLine)
                         and '"serverRequest/resolved"' in item.text}
            for ident in requested:
                if ident not in withdrawn:
                    count = sum(1 for m in _sends(run) if m.get("id") == ident and "result" in m)
                    assert count == 1, f"tool request {ident} answered {count} times"


def _check_usage(run: AppRun, fed: list[Any]) -> None:
    result = run.result
    if result is None:
        return
    reports = []
    for item in fed:
        if isinstance(item, app_records.ServerLine) and '"thread/tokenUsage/updated"' in item.text:
            message = decode_line(item.text)
            assert isinstance(message, Notification)
            reports.append(message.params["tokenUsage"])
    assert result.model_requests == len(reports), (
        f"{len(reports)} usage reports, model_requests {result.model_requests}")
    if not reports:
        assert result.usage is None
        return
    last, first = reports[-1], reports[0]
    total = usage_breakdown(last.get("total"))
    before = {key: count - usage_breakdown(first.get("last"))[key]
              for key, count in usage_breakdown(first.get("total")).items()}
    assert result.usage is not None
    assert result.usage["thread"] == total and result.usage["last"] == usage_breakdown(last.get("last"))
    for key, count in total.items():
        assert result.usage[key] == max(count - max(before[key], 0), 0), f"usage {key}"


def _check_outcome(script: AppScript, run: AppRun, fed: list[Any]) -> None:
    result = run.result
    if result is None:
        return
    last = fed[-1] if fed else None
    ending = run.recording.session.turn.ending if run.recording.session.turn else None
    assert ending is not None
    stop = next((item for item in fed if isinstance(item, (Interrupt, app_records.TurnTimeout))),
                None)
    timed_out = isinstance(stop, app_records.TurnTimeout)  # the first stop: the turn's limit
    assert not script.steps[len(fed) - 1].ends_nothing, (
        f"a turn/completed that is not the turn's ended it: {last}")
    if isinstance(
        last, (EndOfStream, app_records.ProcessExit, IdleTimeout, app_records.RequestTimeout)
    ):
        assert result.outcome == "error" and result.retired, (
            f"{type(last).__name__} ended the turn {result.outcome}, retired={result.retired}")
    elif isinstance(last, app_records.Close):
        assert result.outcome == "error" and result.retired
        assert result.error is not None and result.error["code"] == "session_closed"
    elif isinstance(last, app_records.InterruptTimeout):
        assert result.retired
        assert result.outcome in (("completed", "error") if timed_out else ("interrupted",))
    elif isinstance(last, app_records.ServerLine) and '"turn/completed"' in last.text:
        status = orjson.loads(last.text)["params"]["turn"]["status"]
        if timed_out and status == "interrupted":
            assert result.outcome in ("completed", "error"), f"turn limit gave {result.outcome}"
        else:
            assert result.outcome == status, f"turn/completed {status} gave {result.outcome}"
    if timed_out and result.outcome == "error" and isinstance(
            last, (app_records.ServerLine, app_records.InterruptTimeout)):
        assert result.error is not None and result.error["code"] == "turn_timeout"
    if timed_out and result.outcome == "completed" and not (
            isinstance(last, app_records.ServerLine) and '"completed"' in last.text
            and orjson.loads(last.text)["params"]["turn"]["status"] == "completed"):
        assert result.output_text in script.messages, (  # the whole of a completed message
            f"completed after the turn limit with {result.output_text!r}")
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
