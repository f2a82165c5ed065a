"""Every app-server rule against the real `codex app-server` (@openai/codex 0.169.0), offline.

Each test runs the real binary with a custom model provider pointing at the built-in simulator
(no login, no network), its own CODEX_HOME, and checks the rule on what the session returns,
what the callbacks got, what codex sent the simulator, and the trace, which must replay
identically. The traces named `fixture=` are the ones kept in replay_fixtures/codex_app_server/.
Without a codex binary these tests skip (STREAMFSM_CODEX, PATH, or .ci/run's npm install).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.drivers.codex import native_binary
from engine.simulator.codex_app import LOOPBACK_KEY
from app_support import (
    ESCALATED,
    NO_RETRIES,
    TEXT,
    assert_no_secret,
    codex,
    group_members,
    harness,
    process_gone,
    tool_then_answer,
)
from support import within

__all__ = ["codex"]  # the fixture, imported for pytest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("codex")]


def _tool_results(result: engine.AppTurnResult) -> list[str]:
    return [m["content"] for m in result.messages if m["role"] == "tool"]


def test_text_answer(tmp_path: Path) -> None:
    with harness(tmp_path, {"reply": [{"text": TEXT}]}) as h:
        turn = h.turn(fixture="text_answer")
        assert len(h.requests) == 1
    result = turn.result
    assert result.outcome == "completed" and result.output_text == TEXT
    assert "".join(turn.deltas) == TEXT and turn.first_deltas == 1
    assert result.messages == [{"role": "assistant", "content": TEXT}]  # no echoed user message
    assert result.model_requests == 1 and result.tool_iterations == 0 and result.error is None
    assert result.thread_id and result.turn_id and not result.retired
    assert [(t.source, t.dest) for t in result.transitions if t.machine == "app_turn"] == [
        ("queued", "awaiting_created"), ("awaiting_created", "streaming"),
        ("streaming", "terminal")]


def test_two_turns_reuse_one_process(tmp_path: Path) -> None:
    with harness(tmp_path, {"reply": [{"nth": 1, "text": TEXT},
                                      {"text": "It is on the Seine."}]}) as h:
        first = h.turn()
        pid = h.session.pid
        second = h.turn("Which river?", fixture="second_turn_same_process")
        assert h.session.pid == pid is not None
        assert len(h.requests) == 2
        history = h.requests[1].body["input"]
    assert first.result.outcome == second.result.outcome == "completed"
    assert second.result.output_text == "It is on the Seine."
    assert first.result.thread_id == second.result.thread_id
    assert first.result.turn_id != second.result.turn_id
    assert TEXT in json.dumps(history)  # the thread carried the first answer
    assert second.trace_lines()[0]["session"]["state"] == "ready"


def test_reasoning_deltas_reach_the_reasoning_callback(tmp_path: Path) -> None:
    with harness(tmp_path, {"reply": [{"shape": "reasoning_then_text"}]}) as h:
        turn = h.turn()
    assert turn.result.outcome == "completed"
    assert "".join(turn.reasoning).startswith("The user asks for a capital city")
    assert turn.result.output_text.startswith("The capital of France is Paris.")


def test_a_sandboxed_command_runs_without_asking(tmp_path: Path) -> None:
    asked: list[engine.ApprovalRequest] = []
    scenario = tool_then_answer('{"cmd":"echo streamfsm-tool-ok"}')
    with harness(tmp_path, scenario, approvals=lambda r: asked.append(r) or "decline") as h:
        turn = h.turn(fixture="command_runs_sandboxed")
        second = h.requests[1].body["input"]
    result = turn.result
    assert asked == [] and result.outcome == "completed" and result.tool_iterations == 1
    call, output, answer = result.messages
    (entry,) = call["tool_calls"]
    assert entry["function"]["name"] == "exec_command"
    arguments = json.loads(entry["function"]["arguments"])
    assert set(arguments) == {"command", "cwd"} and "echo streamfsm-tool-ok" in arguments["command"]
    assert output["tool_call_id"] == entry["id"] and "streamfsm-tool-ok" in output["content"]
    assert answer == {"role": "assistant", "content": "The command printed streamfsm-tool-ok."}
    assert result.model_requests == 2
    assert any(item.get("type") == "function_call_output" for item in second)


def test_an_approved_command_that_fails_shows_its_exit_status(tmp_path: Path) -> None:
    asked: list[engine.ApprovalRequest] = []
    arguments = ESCALATED.replace("echo streamfsm-tool-ok", "echo streamfsm-tool-ok; exit 3")
    with harness(tmp_path, tool_then_answer(arguments),
                 approvals=lambda r: asked.append(r) or "accept") as h:
        turn = h.turn(fixture="approval_accepted_exit_3")
        assert len(h.requests) == 2
    (request,) = asked
    assert request.kind == "command" and "exit 3" in (request.command or "")
    assert request.item_id == "call_00_sim" and request.cwd and request.reason
    result = turn.result
    assert result.outcome == "completed" and result.tool_iterations == 1
    (output,) = _tool_results(result)
    assert output.startswith("[exit 3]\n") and "streamfsm-tool-ok" in output
    answers = [m for m in turn.sent() if m.get("id") == 0 and "result" in m]
    assert answers == [{"jsonrpc": "2.0", "id": 0, "result": {"decision": "accept"}}]


@pytest.mark.parametrize("approvals", ["decline", None], ids=["declined", "no_callback"])
def test_a_declined_command_is_not_a_tool_iteration(tmp_path: Path, approvals: Any) -> None:
    callback = (lambda request: approvals) if approvals else None
    with harness(tmp_path, tool_then_answer(ESCALATED), approvals=callback) as h:
        turn = h.turn(fixture="approval_declined" if approvals else None)
        assert len(h.requests) == 2  # the model is told and answers
    result = turn.result
    assert result.outcome == "completed" and result.tool_iterations == 0
    assert _tool_results(result) == ["[declined] the command was not approved"]


PATCH = ("apply_patch <<'EOF'\n*** Begin Patch\n*** Add File: hello.txt\n+hello from streamfsm\n"
         "*** End Patch\nEOF\n")


@pytest.mark.parametrize("decision", ["accept", "decline"])
def test_a_file_change_is_asked_with_its_changes_and_projected_as_apply_patch(
    tmp_path: Path, decision: str
) -> None:
    asked: list[engine.ApprovalRequest] = []
    scenario = tool_then_answer(json.dumps({"cmd": PATCH}), "Patched.")
    with harness(tmp_path, scenario, approvals=lambda r: asked.append(r) or decision) as h:
        turn = h.turn(fixture=f"file_change_{decision}")
    (request,) = asked
    assert request.kind == "file_change" and request.changes is not None
    assert request.changes[0]["kind"] == {"type": "add"}
    assert request.changes[0]["path"].endswith("hello.txt")
    result = turn.result
    call, output, answer = result.messages
    assert call["tool_calls"][0]["function"]["name"] == "apply_patch"
    arguments = json.loads(call["tool_calls"][0]["function"]["arguments"])
    assert arguments["changes"][0]["diff"] == "hello from streamfsm\n"
    created = (tmp_path / "work" / "hello.txt").exists()
    if decision == "accept":
        assert created and output["content"] == "[applied]" and result.tool_iterations == 1
    else:
        assert not created and result.tool_iterations == 0
        assert output["content"] == "[declined] the change was not approved"
    assert result.outcome == "completed" and answer["content"] == "Patched."


def test_cancel_ends_the_turn_interrupted_and_keeps_the_session(tmp_path: Path) -> None:
    with harness(tmp_path, tool_then_answer(ESCALATED), approvals=lambda r: "cancel") as h:
        turn = h.turn(fixture="approval_cancelled")
        pid = h.session.pid
        assert len(h.requests) == 1
        after = h.turn("Never mind.")
        assert h.session.pid == pid
    assert turn.result.outcome == "interrupted" and not turn.result.retired
    assert turn.result.tool_iterations == 0
    assert after.result.outcome == "completed"


def test_an_interrupt_while_an_approval_is_pending_ends_the_turn_promptly(tmp_path: Path) -> None:
    stop = threading.Event()
    interrupted_at: list[float] = []

    def user_walks_away(request: engine.ApprovalRequest) -> str:
        interrupted_at.append(time.monotonic())
        stop.set()  # the user presses stop instead of answering
        time.sleep(3.0)
        return "accept"

    with harness(tmp_path, tool_then_answer(ESCALATED), approvals=user_walks_away) as h:
        turn = h.turn(interrupt=stop, fixture="interrupt_during_approval")
        done = time.monotonic()
        pid = h.session.pid
        after = h.turn("Something else.")
        assert h.session.pid == pid
    result = turn.result
    assert result.outcome == "interrupted" and not result.retired
    assert done - interrupted_at[0] < within(1.0, before=3.0)  # not waiting for the callback's 3 s
    sent = turn.sent()
    replies = [m for m in sent if m.get("id") == 0 and "result" in m]
    assert replies == [{"jsonrpc": "2.0", "id": 0, "result": {"decision": "cancel"}}]
    assert [m["method"] for m in sent if m.get("method") == "turn/interrupt"] == ["turn/interrupt"]
    assert after.result.outcome == "completed"


def test_an_interrupt_mid_answer_keeps_the_partial_text(tmp_path: Path) -> None:
    stop = threading.Event()
    scenario = {"reply": [
        {"nth": 1, "text": "The capital of France is Paris, a city on the Seine.",
         "stall_s": 10, "stall_after": 6},
        {"text": "Second answer."},
    ]}
    with harness(tmp_path, scenario) as h:
        stopped: list[float] = []

        def on_text(delta: str) -> None:
            if not stopped:
                stopped.append(time.monotonic())
                stop.set()

        turn = h.turn(interrupt=stop, on_text=on_text, fixture="interrupt_mid_answer")
        done = time.monotonic()
        pid = h.session.pid
        after = h.turn("Again.")
        assert h.session.pid == pid
    result = turn.result
    assert result.outcome == "interrupted" and not result.retired
    assert done - stopped[0] < within(1.0)  # turn/completed interrupted within a second
    assert result.output_text == "".join(turn.deltas) != ""
    completed = [m for m in turn.received() if m.get("method") == "turn/completed"]
    assert completed[0]["params"]["turn"]["items"] == []  # the text lives only in the deltas
    assert result.messages == [{"role": "assistant", "content": result.output_text}]
    assert any(m.get("method") == "turn/interrupt" for m in turn.sent())
    assert after.result.outcome == "completed" and after.result.output_text == "Second answer."


def test_a_failed_turn_followed_by_a_good_one_keeps_the_process(tmp_path: Path) -> None:
    scenario = {"reply": [{"nth": 1, "status": 500}, {"text": "Recovered."}]}
    with harness(tmp_path, scenario, config=NO_RETRIES) as h:
        failed = h.turn(fixture="failed_then_recovered")
        pid = h.session.pid
        good = h.turn("Try again.")
        assert h.session.pid == pid is not None
        assert [r.status for r in h.requests] == [500, 200]
    assert failed.result.outcome == "failed" and not failed.result.retired
    assert failed.result.error is not None
    assert failed.result.error["code"] == "internalServerError"
    assert failed.result.error["type"] == "turn_failed"
    assert good.result.outcome == "completed" and good.result.output_text == "Recovered."


def test_a_401_retires_the_session_and_the_next_turn_starts_a_new_one(tmp_path: Path) -> None:
    scenario = {"reply": [{"nth": 1, "status": 401}, {"text": "Recovered."}]}
    with harness(tmp_path, scenario, config=NO_RETRIES) as h:
        failed = h.turn(fixture="auth_failure_retires")
        first_pid = failed.trace_lines()  # the pid is not traced; the session's is gone
        assert h.session.pid is None
        good = h.turn("Try again.")
        assert h.session.pid is not None
    assert first_pid
    assert failed.result.outcome == "failed" and failed.result.retired
    assert failed.result.error is not None
    assert failed.result.error["code"] == {"httpConnectionFailed": {"httpStatusCode": 401}}
    assert good.result.outcome == "completed" and good.result.thread_id != failed.result.thread_id


def test_codex_retrying_a_dropped_stream_never_doubles_text(tmp_path: Path) -> None:
    answer = "The capital of France is Paris, a city on the Seine."
    scenario = {"reply": [{"times": 1, "text": answer, "drop_after_bytes": 2500},
                          {"text": answer}]}
    with harness(tmp_path, scenario) as h:
        turn = h.turn(fixture="stream_retry_no_double_text")
        assert len(h.requests) == 2
    result = turn.result
    assert result.outcome == "completed"
    assert "".join(turn.deltas) == result.output_text == answer
    restarts = [m for m in turn.received() if m.get("method") == "item/started"
                and m["params"]["item"]["type"] == "agentMessage"]
    assert len(restarts) == 2  # codex restarted the message and resent its deltas
    retries = [m for m in turn.received() if m.get("method") == "error"]
    assert retries and all(m["params"]["willRetry"] is True for m in retries)
    assert result.messages == [{"role": "assistant", "content": answer}]


def test_a_failed_turn_keeps_the_partial_text(tmp_path: Path) -> None:
    scenario = {"reply": [{"text": "The capital of France is Paris, a city on the Seine.",
                           "drop_after_bytes": 2500}]}
    with harness(tmp_path, scenario, config=NO_RETRIES) as h:
        turn = h.turn(fixture="failed_keeps_partial_text")
    result = turn.result
    assert result.outcome == "failed" and not result.retired
    assert result.output_text == "".join(turn.deltas) != ""
    assert result.messages == [{"role": "assistant", "content": result.output_text}]


@pytest.mark.parametrize("number", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_a_dead_process_retires_the_session_and_the_next_turn_starts_a_new_one(
    tmp_path: Path, number: signal.Signals
) -> None:
    scenario = {"reply": [{"nth": 1, "text": TEXT, "stall_s": 10, "stall_after": 6},
                          {"text": "A new process answers."}]}
    with harness(tmp_path, scenario) as h:
        killed: list[int] = []

        def kill(delta: str) -> None:
            if not killed and h.session.pid is not None:
                killed.append(h.session.pid)
                os.kill(h.session.pid, number)

        fixture = "sigkill_retires" if number == signal.SIGKILL else "sigterm_exit_0_retires"
        dead = h.turn(on_text=kill, fixture=fixture)
        assert h.session.pid is None and process_gone(killed[0])
        again = h.turn("Are you there?")
        assert h.session.pid not in (None, killed[0])
    result = dead.result
    assert result.outcome == "error" and result.retired and dead.elapsed < within(5.0)
    assert result.error is not None and result.error["code"] in ("exited", "eof")
    exits = [r["code"] for r in dead.trace_lines() if r.get("input") == "exit"]
    # SIGTERM makes codex exit 0: a zero exit without turn/completed is a death all the same
    assert exits in ([], [-9 if number == signal.SIGKILL else 0])
    if exits:
        assert f"exited with status {exits[0]}" in result.error["message"]
    assert result.output_text == "".join(dead.deltas)
    assert again.result.outcome == "completed"
    assert again.result.output_text == "A new process answers."


def test_an_idle_timeout_retires_the_session(tmp_path: Path) -> None:
    scenario = {"reply": [{"nth": 1, "text": TEXT, "stall_s": 10, "stall_after": 5},
                          {"text": "Fresh."}]}
    with harness(tmp_path, scenario, idle_timeout_s=1.0) as h:
        turn = h.turn(fixture="idle_timeout_retires")
        assert h.session.pid is None
    result = turn.result
    assert result.outcome == "error" and result.retired and turn.elapsed < within(5.0, before=10.0)
    assert result.error is not None and result.error["code"] == "idle_timeout"
    assert result.output_text == "".join(turn.deltas)


def test_silence_after_a_tool_result_does_not_retire_a_healthy_session(tmp_path: Path) -> None:
    scenario = tool_then_answer('{"cmd":"echo streamfsm-tool-ok"}', stall_s=1.0, stall_after=0)
    with harness(tmp_path, scenario, idle_timeout_s=2.0) as h:
        turn = h.turn(fixture="silence_after_tool_result")
        assert h.session.pid is not None
    assert turn.result.outcome == "completed" and not turn.result.retired
    assert turn.result.tool_iterations == 1


def test_a_slow_approval_does_not_count_as_server_silence(tmp_path: Path) -> None:
    # the idle timeout stays above codex's own quiet spells (running the command, asking the
    # model) on a loaded machine, and below the time the user takes to answer
    def slow(request: engine.ApprovalRequest) -> str:
        time.sleep(2.0)
        return "accept"

    with harness(tmp_path, tool_then_answer(ESCALATED), approvals=slow, idle_timeout_s=1.5) as h:
        turn = h.turn()
    assert turn.result.outcome == "completed" and turn.result.tool_iterations == 1


def test_close_leaves_no_process_behind(tmp_path: Path) -> None:
    with harness(tmp_path, {"reply": [{"text": TEXT}]}) as h:
        h.turn()
        pid = h.session.pid
        assert pid is not None and group_members(pid)
        h.session.close()
        assert h.session.pid is None
        assert process_gone(pid) and group_members(pid) == []


def test_the_npm_launcher_is_resolved_to_the_native_binary(tmp_path: Path, codex: Path) -> None:
    launcher = codex.parents[5] / ".bin" / "codex" if codex.name == "codex" else codex
    if not launcher.exists() or native_binary(launcher) is None:
        pytest.skip(f"no npm launcher beside {codex}")
    with harness(tmp_path, {"reply": [{"text": TEXT}]},
                 command=[str(launcher), "app-server"]) as h:
        turn = h.turn()
        pid = h.session.pid
        assert pid is not None
        assert os.path.realpath(f"/proc/{pid}/exe") == os.path.realpath(native_binary(launcher))
        h.session.close()
        assert process_gone(pid) and group_members(pid) == []
    assert turn.result.outcome == "completed"


def test_secrets_reach_no_trace_log_line_or_error(tmp_path: Path, caplog: Any) -> None:
    scenario = {"reply": [{"nth": 1, "status": 401}, {"text": TEXT}]}
    caplog.set_level(logging.DEBUG, logger="streamfsm")
    with harness(tmp_path, scenario, config=NO_RETRIES) as h:
        failed = h.turn()
        assert h.requests[0].headers.get("authorization") == "[redacted]"  # codex sent the key
        good = h.turn()
    assert good.result.outcome == "completed"
    assert_no_secret(failed.trace.read_text(), good.trace.read_text(), caplog.text,
                     json.dumps(failed.result.error))
    assert LOOPBACK_KEY not in json.dumps([r.to_json() for r in (failed.result, good.result)])


def test_for_endpoint_needs_no_login_and_removes_its_codex_home(tmp_path: Path) -> None:
    """`CodexSession.for_endpoint`: the public way to point codex at a Responses endpoint, offline:
    the request reaches the simulator with the key and model given, and close() removes the
    private CODEX_HOME (a later turn makes a new one)."""
    from engine.simulator.scenarios import scenario_from_data
    from engine.simulator.server import ResponsesSimulator

    scenario = scenario_from_data({"reply": [{"text": TEXT}]}, name="for_endpoint")
    with ResponsesSimulator(scenario, repeat=True) as sim:
        session = engine.CodexSession.for_endpoint(
            sim.base_url, api_key="sk-endpoint-0123456789", model="gpt-5", cwd=tmp_path,
            request_timeout_s=60,
        )
        home = session._private_home
        assert home is not None and os.path.isdir(home)
        try:
            first = session.run_turn("Hi", trace=tmp_path / "turn.jsonl")
            session.close()
            assert not os.path.exists(home)
            second = session.run_turn("Again")
        finally:
            session.close()
        sent = sim.requests
    assert first.outcome == second.outcome == "completed" and first.output_text == TEXT
    assert not os.path.exists(home)
    assert [r.body.get("model") for r in sent] == ["gpt-5", "gpt-5"]
    assert all(r.headers.get("authorization") == "[redacted]" for r in sent)
    assert engine.replay(tmp_path / "turn.jsonl").identical
    written = (tmp_path / "turn.jsonl").read_text()
    assert "sk-endpoint-0123456789" not in written and "sk-endpoint-" not in written
