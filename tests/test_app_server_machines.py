"""The app-server session and turn machines, fed by hand: each rule is `receive()` and an assert.

The lines have the real server's shapes (engine.fuzz.app_lines); the real binary's own
lines are in tests/test_app_server_real.py and replay_fixtures/codex_app_server/.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from transitions import MachineError

from engine.fuzz import app_lines as L
from machines import app_session, app_turn
from machines.app_records import (
    ApprovalAnswer,
    InterruptTimeout,
    ProcessExit,
    RequestTimeout,
    SpawnFailed,
    StderrLine,
    TurnRequest,
)
from machines.app_session import AppSession
from machines.records import EndOfStream, IdleTimeout, Interrupt
from app_support import CONFIG, Fed, started

def test_the_handshake_then_turn_start() -> None:
    fed = Fed()
    fed.feed(TurnRequest("hi"))
    assert [m["method"] for m in fed.sent()] == ["initialize"]
    assert fed.session.state == "initializing" and fed.turn.state == "queued"
    fed.feed(*L.handshake())
    methods = [m.get("method") for m in fed.sent()]
    assert methods == ["initialize", "initialized", "thread/start", "turn/start"]
    assert "id" not in fed.sent()[1]  # a notification
    assert fed.sent()[2]["params"] == {"cwd": "/work", "approvalPolicy": "on-request",
                                       "sandbox": "read-only"}
    assert fed.sent()[3]["params"] == {"threadId": L.THREAD,
                                       "input": [{"type": "text", "text": "hi"}]}
    assert fed.path("app_session") == [
        ("spawned", "initializing", "begin"),
        ("initializing", "starting_thread", "initialized"),
        ("starting_thread", "ready", "thread_started"),
        ("ready", "turn_running", "turn_begins"),
    ]


def test_a_text_answer_completes_from_turn_status() -> None:
    fed = started()
    fed.feed(L.agent_started(), L.agent_delta("Par"), L.agent_delta("is."),
             L.agent_completed("Paris."), L.token_usage())
    fed.feed(L.turn_completed("completed", [{"type": "agentMessage", "id": "msg_1",
                                              "text": "Paris."}]))
    result = fed.result()
    assert result.outcome == "completed" and result.output_text == "Paris."
    assert fed.effects("first_delta") == [None] and fed.text() == "Paris."
    assert result.messages == [{"role": "assistant", "content": "Paris."}]  # no echoed user message
    assert result.model_requests == 1 and result.error is None and not result.retired
    assert fed.session.state == "ready"
    assert fed.path("app_turn")[-1] == ("streaming", "terminal", "completed")


def test_failed_status_is_failed_with_turn_error_and_keeps_the_session() -> None:
    fed = started()
    fed.feed(L.error("high demand", "internalServerError", False))
    assert fed.turn.state == "streaming"  # an error notification alone ends nothing
    error = {"message": "high demand", "codexErrorInfo": "internalServerError",
             "additionalDetails": None}
    fed.feed(L.turn_completed("failed", error=error))
    result = fed.result()
    assert result.outcome == "failed" and not result.retired
    assert result.error == {"message": "high demand", "code": "internalServerError",
                            "type": "turn_failed", "details": None}
    assert fed.session.state == "ready"


def test_will_retry_errors_never_end_the_turn() -> None:
    fed = started()
    for n in range(1, 6):
        fed.feed(L.error(f"Reconnecting... {n}/5", {"responseStreamDisconnected": {}}, True))
    assert fed.turn.state == "streaming" and not fed.turn.is_final
    fed.feed(L.turn_completed("completed"))
    assert fed.result().outcome == "completed" and fed.result().error is None


@pytest.mark.parametrize("code", [
    "unauthorized", {"httpConnectionFailed": {"httpStatusCode": 401}},
    {"responseTooManyFailedAttempts": {"httpStatusCode": 401}},
])
def test_credential_failures_retire_the_session(code: Any) -> None:
    fed = started()
    fed.feed(L.turn_completed("failed", error={"message": "401 Unauthorized",
                                               "codexErrorInfo": code}))
    result = fed.result()
    assert result.outcome == "failed" and result.retired
    assert fed.effects("retire") == [{"reason": "auth_failure"}]


def test_invalid_grant_retires_the_session() -> None:
    fed = started()
    fed.feed(L.turn_completed("failed", error={
        "message": "refresh failed: invalid_grant", "codexErrorInfo": "other"}))
    assert fed.result().retired


def test_a_restarted_message_is_never_delivered_twice() -> None:
    fed = started()
    fed.feed(L.agent_started(), L.agent_delta("The c"), L.agent_delta("apita"))
    fed.feed(L.error("Reconnecting... 1/5", {"responseStreamDisconnected": {}}, True))
    fed.feed(L.agent_started(), L.agent_delta("The c"), L.agent_delta("apita"),
             L.agent_delta("l is "), L.agent_delta("Paris."))
    assert fed.text() == "The capital is Paris."
    assert fed.effects("text_delta") == ["The c", "apita", "l is ", "Paris."]
    fed.feed(L.agent_completed("The capital is Paris."), L.turn_completed(
        "completed", [{"type": "agentMessage", "id": "msg_1", "text": "The capital is Paris."}]))
    assert fed.result().output_text == "The capital is Paris."
    assert fed.result().messages == [{"role": "assistant", "content": "The capital is Paris."}]


def test_a_restart_with_different_deltas_catches_up_mid_delta() -> None:
    fed = started()
    fed.feed(L.agent_started(), L.agent_delta("The capital"))
    fed.feed(L.agent_started(), L.agent_delta("The ca"), L.agent_delta("pital of F"),
             L.agent_delta("rance"))
    assert fed.effects("text_delta") == ["The capital", " of F", "rance"]


def test_a_restart_that_says_something_else_delivers_nothing_more() -> None:
    fed = started()
    fed.feed(L.agent_started(), L.agent_delta("Paris is"))
    fed.feed(L.agent_started(), L.agent_delta("Lyon is"), L.agent_delta(" not it"))
    assert fed.text() == "Paris is"
    fed.feed(Interrupt(), L.turn_completed("interrupted"))
    assert fed.result().output_text == "Lyon is not it"  # the last run's own text, not a mix


def test_a_second_message_after_a_tool_is_delivered_whole() -> None:
    fed = started()
    fed.feed(L.agent_started("msg_a"), L.agent_delta("Let me look.", "msg_a"),
             L.agent_completed("Let me look.", "msg_a"))
    fed.feed(L.command_started(), L.command_completed())
    fed.feed(L.agent_started("msg_b"), L.agent_delta("Done.", "msg_b"),
             L.agent_completed("Done.", "msg_b"))
    assert fed.text() == "Let me look.Done."
    fed.feed(L.turn_completed("completed", [
        {"type": "agentMessage", "id": "msg_a", "text": "Let me look."},
        {"type": "agentMessage", "id": "msg_b", "text": "Done."}]))
    assert fed.result().output_text == "Done." and fed.result().tool_iterations == 1


def test_completed_text_the_deltas_never_sent_is_delivered_once() -> None:
    fed = started()
    fed.feed(L.agent_started(), L.agent_delta("Par"), L.agent_completed("Paris."))
    assert fed.effects("text_delta") == ["Par", "is."]


@pytest.mark.parametrize("status", ["interrupted", "failed"])
def test_partial_text_survives_interrupted_and_failed_turns(status: str) -> None:
    fed = started()
    fed.feed(L.agent_started(), L.agent_delta("The capital"), L.agent_delta(" of"))
    fed.feed(L.turn_completed(status, [], error={"message": "x", "codexErrorInfo": "other"}))
    result = fed.result()
    assert result.outcome == status and result.output_text == "The capital of"
    assert result.messages == [{"role": "assistant", "content": "The capital of"}]


def test_projection_of_a_command_and_its_failure() -> None:
    fed = started()
    fed.feed(L.command_started("call_1", "false"))
    assert fed.turn.state == "tool_call"
    fed.feed(L.command_completed("call_1", "false", status="failed", exit_code=1, output="boom\n"))
    assert fed.turn.state == "streaming"
    call, result = fed.turn.messages
    assert call["tool_calls"][0]["function"]["name"] == "exec_command"
    assert json.loads(call["tool_calls"][0]["function"]["arguments"]) == {
        "command": "/bin/bash -lc 'false'", "cwd": "/work"}
    assert result == {"role": "tool", "tool_call_id": "call_1", "content": "[exit 1]\nboom\n"}
    assert fed.turn.tool_iterations == 1  # it ran


def test_an_approval_is_asked_answered_once_in_its_shape() -> None:
    fed = started()
    fed.feed(L.command_started(), L.command_approval(0))
    assert fed.turn.state == "awaiting_approval"
    (asked,) = fed.effects("approval")
    assert asked["kind"] == "command" and asked["request_id"] == 0
    assert asked["command"] == "/bin/bash -lc 'echo ok'" and asked["item_id"] == "call_1"
    fed.feed(ApprovalAnswer(0, "accept"))
    assert fed.sent()[-1] == {"jsonrpc": "2.0", "id": 0, "result": {"decision": "accept"}}
    assert fed.turn.state == "tool_call"
    fed.feed(ApprovalAnswer(0, "decline"))  # a second answer is not sent
    assert [m for m in fed.sent() if m.get("id") == 0 and "result" in m] == [fed.sent()[-1]]


def test_declined_and_failed_approvals_are_not_tool_iterations() -> None:
    fed = started()
    fed.feed(L.command_started("c1"), L.command_approval(0, "c1"), ApprovalAnswer(0, "decline"))
    fed.feed(L.command_completed("c1", status="declined", exit_code=None, output=None))
    fed.feed(L.command_started("c2"), L.command_completed("c2", status="failed", exit_code=None,
                                                          output=None))
    assert fed.turn.tool_iterations == 0
    tools = [m["content"] for m in fed.turn.messages if m["role"] == "tool"]
    assert tools == ["[declined] the command was not approved", "[failed] the command did not run"]


def test_an_interrupt_cancels_a_pending_approval_then_interrupts() -> None:
    fed = started()
    fed.feed(L.command_started(), L.command_approval(0))
    fed.feed(Interrupt())
    assert fed.turn.state == "interrupting"
    assert fed.sent()[-2:] == [
        {"jsonrpc": "2.0", "id": 0, "result": {"decision": "cancel"}},
        {"jsonrpc": "2.0", "id": 4, "method": "turn/interrupt",
         "params": {"threadId": L.THREAD, "turnId": L.TURN}},
    ]
    fed.feed(ApprovalAnswer(0, "accept"))  # the callback answers late: ignored
    assert fed.sent()[-1]["id"] == 4
    fed.feed(L.response(4, {}), L.turn_completed("interrupted"))
    assert fed.result().outcome == "interrupted" and not fed.result().retired


def test_interrupt_before_the_turn_id_is_known_waits_for_it() -> None:
    fed = Fed()
    fed.feed(TurnRequest("hi"), *L.handshake(), Interrupt())
    assert fed.turn.state == "interrupting"
    assert "turn/interrupt" not in [m.get("method") for m in fed.sent()]
    fed.feed(L.turn_start_response(3))
    assert fed.sent()[-1]["method"] == "turn/interrupt"


def test_interrupt_during_the_handshake_ends_the_queued_turn() -> None:
    fed = Fed()
    fed.feed(TurnRequest("hi"), Interrupt())
    assert fed.turn.state == "retire" and fed.result().outcome == "interrupted"
    assert fed.session.state == "initializing" and not fed.result().retired


def test_no_turn_completed_after_interrupt_retires() -> None:
    fed = started()
    fed.feed(Interrupt(), InterruptTimeout(2.0))
    result = fed.result()
    assert result.outcome == "interrupted" and result.retired


def test_cancel_where_the_schema_has_none_declines_then_interrupts() -> None:
    fed = started()
    fed.feed(L.server_request(7, "item/tool/requestUserInput", {
        "threadId": L.THREAD, "turnId": L.TURN, "itemId": "u1", "questions": []}))
    fed.feed(ApprovalAnswer(7, "cancel"))
    assert fed.sent()[-2]["result"] == {"answers": {}}
    assert fed.sent()[-1]["method"] == "turn/interrupt"


@pytest.mark.parametrize("method, decision, expected", [
    ("item/permissions/requestApproval", "decline", {"permissions": {}, "scope": "turn"}),
    ("item/permissions/requestApproval", "accept",
     {"permissions": {"network": {"enabled": True}}, "scope": "turn"}),
    ("item/permissions/requestApproval", "acceptForSession",
     {"permissions": {"network": {"enabled": True}}, "scope": "session"}),
    ("mcpServer/elicitation/request", "decline", {"action": "decline", "content": None}),
    ("mcpServer/elicitation/request", "cancel", {"action": "cancel", "content": None}),
    ("item/tool/requestUserInput", "accept", {"answers": {}}),
    ("item/fileChange/requestApproval", "acceptForSession", {"decision": "acceptForSession"}),
    ("execCommandApproval", "accept", {"decision": "approved"}),
    ("applyPatchApproval", "decline", {"decision": "denied"}),
])
def test_answers_take_their_own_schema_shape(method: str, decision: str, expected: Any) -> None:
    fed = started()
    fed.feed(L.server_request(5, method, {"threadId": L.THREAD, "turnId": L.TURN, "itemId": "i",
                                          "permissions": {"network": {"enabled": True}}}))
    fed.feed(ApprovalAnswer(5, decision))  # type: ignore[arg-type]
    assert fed.sent()[-1 if decision != "cancel" or method.startswith("mcp") else -2] == {
        "jsonrpc": "2.0", "id": 5, "result": expected}


def test_unknown_server_requests_get_a_json_rpc_error() -> None:
    fed = started()
    fed.feed(L.server_request(9, "item/tool/call", {"threadId": L.THREAD, "turnId": L.TURN}))
    assert fed.sent()[-1] == {"jsonrpc": "2.0", "id": 9, "error": {
        "code": -32601, "message": "streamfsm does not handle item/tool/call"}}
    assert fed.turn.state == "streaming"


def test_other_threads_and_turns_are_ignored() -> None:
    fed = started()
    fed.feed(L.agent_delta("x", turn="turn-other"), L.agent_delta("y", thread="thread-other"),
             L.turn_completed("completed", turn="turn-other"))
    assert fed.text() == "" and not fed.turn.is_final


def test_a_turn_adopts_the_first_new_turn_id_it_hears_of() -> None:
    fed = Fed()
    fed.feed(TurnRequest("hi"), *L.handshake(), L.turn_started(), L.agent_delta("ok"))
    assert fed.turn.turn_id == L.TURN and fed.text() == "ok"


def test_lines_that_are_not_json_rpc_are_counted_and_change_nothing() -> None:
    fed = started()
    before = fed.turn.state
    fed.feed("not json", "[1, 2]", '{"neither": "method nor id"}', "")
    assert fed.turn.state == before and fed.session.unreadable == 4


@pytest.mark.parametrize("fault, trigger", [
    (EndOfStream(), "eof"), (ProcessExit(0), "exited"), (ProcessExit(-9), "exited"),
    (IdleTimeout(5.0), "idle_timeout"), (RequestTimeout(3, "turn/start", 30.0), "request_timeout"),
])
def test_death_and_timeouts_end_the_turn_error_and_retire(fault: Any, trigger: str) -> None:
    fed = Fed()
    fed.feed(TurnRequest("hi"), *L.handshake(), L.turn_started())  # turn/start unanswered
    fed.feed(StderrLine("panic: something broke"), L.agent_started(), L.agent_delta("part"))
    fed.feed(fault)
    result = fed.result()
    assert result.outcome == "error" and result.retired and result.output_text == "part"
    assert result.error["code"] == trigger
    assert "panic: something broke" in result.error["message"]
    assert fed.effects("retire") == [{"reason": trigger}]


def test_a_zero_exit_before_turn_completed_is_still_an_error() -> None:
    fed = started()
    fed.feed(ProcessExit(0))
    assert fed.result().outcome == "error" and "status 0" in fed.result().error["message"]


def test_request_timeout_only_for_a_request_still_pending() -> None:
    fed = started()
    fed.feed(RequestTimeout(3, "turn/start", 30.0))  # answered already: nothing happens
    assert not fed.turn.is_final


@pytest.mark.parametrize("lines, reason", [
    ([L.server_request(1, "x", {})], None),
    ([json.dumps({"id": 1, "error": {"code": -32600, "message": "Not initialized"}})],
     "refused initialize"),
])
def test_protocol_breach_in_the_handshake_retires(lines: list[str], reason: str | None) -> None:
    fed = Fed()
    fed.feed(TurnRequest("hi"), *lines)
    if reason is None:
        assert not fed.turn.is_final  # an unknown request is answered, not a breach
        return
    assert fed.result().outcome == "error" and fed.result().retired
    assert reason in fed.result().error["message"]


def test_thread_start_without_an_id_is_a_breach() -> None:
    fed = Fed()
    fed.feed(TurnRequest("hi"), L.handshake()[0], L.response(2, {"thread": {}}))
    assert fed.result().error["code"] == "protocol_breach"


def test_a_spawn_failure_is_an_error_outcome() -> None:
    fed = Fed()
    fed.feed(TurnRequest("hi"), SpawnFailed("FileNotFoundError: no such file"))
    assert fed.result().outcome == "error" and fed.result().retired
    assert fed.result().error["code"] == "spawn_failed"


def test_eof_between_turns_retires_directly() -> None:
    fed = started()
    fed.feed(L.turn_completed("completed"))
    fed.feed(EndOfStream())
    assert fed.session.state == "retired"
    assert fed.path("app_session")[-1] == ("ready", "retired", "eof")


def test_snapshot_and_restore_between_turns() -> None:
    fed = started()
    fed.feed(L.turn_completed("completed"))
    snapshot = json.loads(json.dumps(fed.session.snapshot()))
    again = Fed(AppSession.restore(CONFIG, snapshot))
    again.feed(TurnRequest("more"))
    assert again.sent() == [{"jsonrpc": "2.0", "id": 4, "method": "turn/start", "params": {
        "threadId": L.THREAD, "input": [{"type": "text", "text": "more"}]}}]
    assert again.turn.number == 2
    again.feed(L.turn_completed("completed"))  # the old turn's id: ignored
    assert not again.turn.is_final


def test_every_fired_trigger_has_rows_and_impossible_ones_raise() -> None:
    fired = {row.trigger for row in app_turn.TABLE.rows}
    assert {"retrying", "error_reported", "approval_settled", "interrupt_timeout"} <= fired
    turn = app_turn.AppTurn(1, "hi", AppSession(CONFIG))
    with pytest.raises(MachineError):
        app_turn.TABLE.fire(turn, app_turn.Trigger.COMPLETED)  # a queued turn cannot complete
    assert set(app_session.State) == {"spawned", "initializing", "resuming_thread",
                                       "starting_thread", "ready", "turn_running", "retired"}
