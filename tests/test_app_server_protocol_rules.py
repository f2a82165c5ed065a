"""The rest of the protocol real agents use (contract v3), one rule per test, the machines fed by
hand: resuming a thread, developer instructions, the client's own tools, usage, compaction,
steering, the turn's wall-clock limit, closing the session, and `turn/completed` lines that do
not end the turn.

The lines have the real server's shapes (engine.fuzz.app_lines, as measured on codex 0.169.0);
the real binary's own lines are in tests/test_app_server_real_protocol.py and the fixtures it
records.
"""

from __future__ import annotations

import attrs
import pytest

from engine.fuzz import app_lines as L
from machines.app_records import (
    Close,
    CompactRequest,
    InterruptTimeout,
    SessionConfig,
    Steer,
    ToolAnswer,
    ToolCall,
    TurnRequest,
    TurnTimeout,
)
from machines.app_session import AppSession
from machines.records import Interrupt
from app_support import CONFIG, Fed, started

TOOL = {"name": "lookup", "description": "Looks a thing up", "inputSchema": {"type": "object"}}
WITH_TOOLS = attrs.evolve(CONFIG, dynamic_tools=(TOOL,))
PARAMS = {"cwd": "/work", "approvalPolicy": "on-request", "sandbox": "read-only"}
OTHER_THREAD = "thread-0002"


def methods(fed: Fed) -> list[str | None]:
    return [message.get("method") for message in fed.sent()]


def replies(fed: Fed, ident: int) -> list[object]:
    return [m["result"] for m in fed.sent() if m.get("id") == ident and "result" in m]


# -- resuming a thread -------------------------------------------------------------------------


def test_a_thread_id_is_resumed_instead_of_started() -> None:
    fed = Fed(AppSession(attrs.evolve(CONFIG, thread_id=L.THREAD)))
    fed.feed(TurnRequest("more"), *L.handshake())
    assert fed.sent()[2] == {"jsonrpc": "2.0", "id": 2, "method": "thread/resume",
                             "params": {"threadId": L.THREAD, **PARAMS}}
    assert fed.path("app_session")[1:3] == [
        ("initializing", "resuming_thread", "initialized"),
        ("resuming_thread", "ready", "thread_resumed")]
    fed.feed(L.turn_start_response(3), L.turn_completed("completed"))
    assert fed.result().thread_resumed and fed.result().thread_id == L.THREAD


def test_a_refused_resume_starts_a_new_thread() -> None:
    fed = Fed(AppSession(attrs.evolve(CONFIG, thread_id="01a24e4b-0000-7000-8000-000000000000")))
    fed.feed(TurnRequest("more"), L.handshake()[0])
    fed.feed(L.error_response(2, "no rollout found for thread id 01a24e4b-..."))
    assert fed.sent()[-1] == {"jsonrpc": "2.0", "id": 3, "method": "thread/start", "params": PARAMS}
    fed.feed(L.response(3, {"thread": {"id": OTHER_THREAD}}))
    assert fed.path("app_session")[1:4] == [
        ("initializing", "resuming_thread", "initialized"),
        ("resuming_thread", "starting_thread", "resume_refused"),
        ("starting_thread", "ready", "thread_started")]
    assert fed.sent()[-1]["params"]["threadId"] == OTHER_THREAD
    fed.feed(L.turn_start_response(4), L.turn_completed("completed", thread=OTHER_THREAD))
    assert not fed.result().thread_resumed and fed.result().thread_id == OTHER_THREAD


def test_a_turn_learns_its_id_only_from_turn_started_or_its_response() -> None:
    # codex reports the resumed thread's usage under the id of the turn that made it
    fed = Fed(AppSession(attrs.evolve(CONFIG, thread_id=L.THREAD)))
    fed.feed(TurnRequest("more"), *L.handshake())
    fed.feed(L.token_usage("turn-earlier", last=(24, 0, 6, 0), total=(24, 0, 6, 0)))
    assert fed.turn.turn_id is None
    fed.feed(L.turn_start_response(3), L.turn_completed("completed"))
    assert fed.result().outcome == "completed" and fed.result().turn_id == L.TURN


# -- developer instructions --------------------------------------------------------------------


def test_developer_instructions_go_with_the_thread_request() -> None:
    fed = started(config=attrs.evolve(CONFIG, developer_instructions="Answer in French."))
    assert fed.sent()[2]["params"] == {**PARAMS, "developerInstructions": "Answer in French."}


def test_other_instructions_between_turns_start_a_new_thread() -> None:
    fed = started(config=attrs.evolve(CONFIG, developer_instructions="Answer in French."))
    fed.feed(L.turn_completed("completed"))
    fed.session.config = attrs.evolve(fed.session.config, developer_instructions="Be brief.")
    fed.feed(TurnRequest("again"))
    assert fed.sent()[-1] == {"jsonrpc": "2.0", "id": 4, "method": "thread/start",
                              "params": {**PARAMS, "developerInstructions": "Be brief."}}
    assert fed.path("app_session")[-1] == ("ready", "starting_thread", "new_thread")
    fed.feed(L.response(4, {"thread": {"id": OTHER_THREAD}}))
    assert fed.sent()[-1]["method"] == "turn/start"
    assert fed.sent()[-1]["params"]["threadId"] == OTHER_THREAD
    fed.feed(L.turn_start_response(5, "turn-0002"))
    fed.feed(L.turn_completed("completed", turn="turn-0002", thread=OTHER_THREAD))
    assert fed.result().thread_id == OTHER_THREAD and fed.result().outcome == "completed"


def test_the_same_instructions_keep_the_thread() -> None:
    fed = started(config=attrs.evolve(CONFIG, developer_instructions="Answer in French."))
    fed.feed(L.turn_completed("completed"), TurnRequest("again"))
    assert fed.sent()[-1]["method"] == "turn/start"


# -- the client's own tools --------------------------------------------------------------------


def test_tools_ask_for_the_experimental_api_and_are_offered_with_thread_start() -> None:
    fed = started(config=WITH_TOOLS)
    initialize, _, thread_start = fed.sent()[:3]
    assert initialize["params"]["capabilities"] == {"experimentalApi": True}
    assert thread_start["params"]["dynamicTools"] == [TOOL]


def test_a_tool_call_is_asked_of_the_handler_and_its_text_answered() -> None:
    fed = started(config=WITH_TOOLS)
    fed.feed(L.dynamic_tool_started("call_t1", arguments={"q": "x"}))
    fed.feed(L.tool_call(0, "call_t1", arguments={"q": "x"}))
    assert fed.turn.state == "awaiting_tool"
    (asked,) = fed.effects("call_tool")
    assert asked == {"request_id": 0, "call_id": "call_t1", "tool": "lookup",
                     "arguments": {"q": "x"}, "thread_id": L.THREAD, "turn_id": L.TURN}
    fed.feed(ToolAnswer(0, "found it"))
    assert replies(fed, 0) == [{"contentItems": [{"type": "inputText", "text": "found it"}],
                                "success": True}]
    assert fed.turn.state == "tool_call"
    fed.feed(L.dynamic_tool_completed("call_t1", arguments={"q": "x"}, text="found it"))
    assert fed.turn.state == "streaming"
    fed.feed(L.turn_completed("completed"))
    result = fed.result()
    assert result.tool_calls == [ToolCall("call_t1", "lookup", {"q": "x"}, L.THREAD, L.TURN)]
    assert result.tool_iterations == 1
    assert result.messages[1] == {"role": "tool", "tool_call_id": "call_t1", "content": "found it"}


def test_a_raising_handler_is_answered_as_a_failure_and_the_turn_goes_on() -> None:
    fed = started(config=WITH_TOOLS)
    fed.feed(L.dynamic_tool_started(), L.tool_call(0))
    fed.feed(ToolAnswer(0, "the service is down", False, "the tool handler raised ValueError"))
    assert replies(fed, 0) == [{"contentItems": [{"type": "inputText",
                                                  "text": "the service is down"}],
                                "success": False}]
    fed.feed(L.dynamic_tool_completed(text="the service is down", success=False))
    assert fed.turn.messages[-1]["content"] == "[error] the service is down"
    fed.feed(L.turn_completed("completed"))
    assert fed.result().outcome == "completed"


def test_a_repeated_call_id_gets_the_first_answer_without_a_second_call() -> None:
    fed = started(config=WITH_TOOLS)
    fed.feed(L.dynamic_tool_started(), L.tool_call(0), ToolAnswer(0, "first"))
    fed.feed(L.dynamic_tool_completed(text="first"))
    fed.feed(L.dynamic_tool_started(), L.tool_call(1))  # the model repeated the call id
    assert len(fed.effects("call_tool")) == 1
    assert replies(fed, 1) == replies(fed, 0)
    fed.feed(L.dynamic_tool_completed(text="first"))
    assert fed.turn.state == "streaming" and len(fed.turn.messages) == 2  # projected once


def test_a_call_id_asked_again_while_the_first_waits_gets_the_same_answer() -> None:
    fed = started(config=WITH_TOOLS)
    fed.feed(L.dynamic_tool_started(), L.tool_call(0), L.tool_call(1))
    assert len(fed.effects("call_tool")) == 1 and replies(fed, 1) == []
    fed.feed(ToolAnswer(0, "answer"))
    assert replies(fed, 0) == replies(fed, 1) != []


def test_an_interrupt_answers_a_pending_tool_call_as_failed() -> None:
    fed = started(config=WITH_TOOLS)
    fed.feed(L.dynamic_tool_started(), L.tool_call(0), Interrupt())
    assert replies(fed, 0)[0]["success"] is False  # type: ignore[index]
    assert methods(fed)[-1] == "turn/interrupt"
    fed.feed(ToolAnswer(0, "late"))  # the handler answers after all: ignored
    assert len(replies(fed, 0)) == 1


def test_a_withdrawn_tool_call_is_not_answered_nor_asked_again() -> None:
    fed = started(config=WITH_TOOLS)
    fed.feed(L.dynamic_tool_started(), L.tool_call(0), L.resolved(0))
    assert fed.turn.state == "tool_call"
    fed.feed(ToolAnswer(0, "late"), L.tool_call(1))  # the handler answers; codex asks again
    assert replies(fed, 0) == [] and len(fed.effects("call_tool")) == 1
    assert replies(fed, 1)[0]["success"] is False  # type: ignore[index]


def test_tool_calls_without_tools_offered_get_a_json_rpc_error() -> None:
    fed = started()
    fed.feed(L.tool_call(0))
    assert fed.sent()[-1]["error"]["message"] == "streamfsm does not handle item/tool/call"
    assert fed.effects("call_tool") == []


# -- usage -------------------------------------------------------------------------------------


def test_usage_is_the_turn_s_the_thread_s_and_the_last_request_s() -> None:
    fed = started()
    fed.feed(L.token_usage(last=(24, 0, 8, 0), total=(24, 0, 8, 0), window=258400))
    fed.feed(L.token_usage(last=(30, 10, 4, 2), total=(54, 10, 12, 2), window=258400))
    fed.feed(L.turn_completed("completed"))
    usage = fed.result().usage
    assert usage == {
        "input_tokens": 54, "cached_input_tokens": 10, "output_tokens": 12,
        "reasoning_output_tokens": 2, "total_tokens": 66,
        "thread": {"input_tokens": 54, "cached_input_tokens": 10, "output_tokens": 12,
                   "reasoning_output_tokens": 2, "total_tokens": 66},
        "last": {"input_tokens": 30, "cached_input_tokens": 10, "output_tokens": 4,
                 "reasoning_output_tokens": 2, "total_tokens": 34},
        "model_context_window": 258400,
    }
    assert fed.result().model_requests == 2


def test_the_next_turn_counts_its_usage_from_the_thread_s_total() -> None:
    fed = started()
    fed.feed(L.token_usage(last=(24, 0, 8, 0), total=(24, 0, 8, 0)), L.turn_completed("completed"))
    fed.feed(TurnRequest("again"), L.turn_start_response(4, "turn-0002"))
    # a report that repeats the thread's total first (codex does so when compacting)
    fed.feed(L.token_usage("turn-0002", last=(24, 0, 8, 0), total=(24, 0, 8, 0)))
    fed.feed(L.token_usage("turn-0002", last=(40, 0, 5, 0), total=(64, 0, 13, 0)))
    fed.feed(L.turn_completed("completed", turn="turn-0002"))
    usage = fed.result().usage
    assert usage is not None and usage["total_tokens"] == 45 and usage["input_tokens"] == 40
    assert usage["thread"]["total_tokens"] == 77


def test_a_turn_without_usage_reports_none() -> None:
    fed = started()
    fed.feed(L.turn_completed("completed"))
    assert fed.result().usage is None


# -- compaction --------------------------------------------------------------------------------


def test_a_compaction_is_a_turn_of_codex_s_own() -> None:
    fed = started()
    fed.feed(L.turn_completed("completed"), CompactRequest())
    assert fed.sent()[-1] == {"jsonrpc": "2.0", "id": 4, "method": "thread/compact/start",
                              "params": {"threadId": L.THREAD}}
    fed.feed(L.response(4, {}))
    assert fed.turn.turn_id is None  # its id comes with turn/started
    fed.feed(L.turn_started("turn-compact"), *L.compaction(turn="turn-compact"))
    fed.feed(L.turn_completed("completed", turn="turn-compact"))
    result = fed.result()
    assert result.outcome == "completed" and result.compacted
    assert result.turn_id == "turn-compact" and fed.session.state == "ready"


def test_a_refused_compaction_fails_and_keeps_the_session() -> None:
    fed = started()
    fed.feed(L.turn_completed("completed"), CompactRequest(), L.error_response(4, "no thread"))
    result = fed.result()
    assert result.outcome == "failed" and not result.compacted and not result.retired
    assert "no thread" in result.error["message"]
    assert fed.session.state == "ready"


def test_automatic_compaction_inside_a_turn_is_reported() -> None:
    fed = started()
    fed.feed(*L.compaction(), L.turn_completed("completed"))
    assert fed.result().compacted


# -- steering ----------------------------------------------------------------------------------


def test_a_steer_sends_turn_steer_and_tells_the_caller_codex_s_answer() -> None:
    fed = started()
    fed.feed(L.agent_started(), L.agent_delta("The c"), Steer("Answer in two words."))
    assert fed.sent()[-1] == {"jsonrpc": "2.0", "id": 4, "method": "turn/steer", "params": {
        "threadId": L.THREAD, "expectedTurnId": L.TURN,
        "input": [{"type": "text", "text": "Answer in two words."}]}}
    fed.feed(L.response(4, {"turnId": L.TURN}))
    assert fed.effects("steered") == [{"accepted": True, "error": None}]


def test_after_a_steer_the_next_message_is_new_even_under_the_same_id() -> None:
    fed = started()
    fed.feed(L.agent_started(), L.agent_delta("The capital of"), Steer("Shorter."))
    fed.feed(L.response(4, {"turnId": L.TURN}), *L.user_message("Shorter."))
    fed.feed(L.agent_started(), L.agent_delta("Paris."), L.agent_completed("Paris."))
    assert fed.effects("text_delta") == ["The capital of", "Paris."]
    fed.feed(L.turn_completed("completed", [{"type": "agentMessage", "id": "msg_1",
                                             "text": "Paris."}]))
    result = fed.result()
    assert result.output_text == "Paris."
    assert result.messages == [{"role": "assistant", "content": "The capital of"},
                               {"role": "assistant", "content": "Paris."}]


def test_a_refused_steer_and_one_with_no_turn_answer_false() -> None:
    fed = started()
    fed.feed(Steer("x"), L.error_response(4, "expected active turn id"))
    assert fed.effects("steered") == [{"accepted": False, "error": "expected active turn id"}]
    fed.feed(L.turn_completed("completed"), Steer("late"))
    assert fed.effects("steered")[-1]["accepted"] is False
    assert methods(fed).count("turn/steer") == 1


def test_a_steer_before_the_turn_id_is_known_is_refused() -> None:
    fed = Fed()
    fed.feed(TurnRequest("hi"), *L.handshake(), Steer("x"))
    assert fed.effects("steered") == [{"accepted": False,
                                       "error": "the turn cannot be steered now"}]


# -- the turn's wall-clock limit ---------------------------------------------------------------


def test_a_limit_after_the_final_message_completes_with_it() -> None:
    fed = started()
    fed.feed(L.agent_started(), L.agent_delta("Paris."), L.agent_completed("Paris."))
    fed.feed(TurnTimeout(5.0))
    assert fed.turn.state == "interrupting" and methods(fed)[-1] == "turn/interrupt"
    fed.feed(L.response(4, {}), L.turn_completed("interrupted"))
    result = fed.result()
    assert result.outcome == "completed" and result.output_text == "Paris."
    assert result.error is None and not result.retired
    assert fed.effects("outcome")[-1]["reason"] == "turn_timeout"


def test_a_limit_before_the_answer_is_an_error() -> None:
    fed = started()
    fed.feed(L.agent_started(), L.agent_delta("Par"), TurnTimeout(5.0))
    fed.feed(L.turn_completed("interrupted"))
    result = fed.result()
    assert result.outcome == "error" and result.output_text == "Par"
    assert result.error == {"message": "the turn did not end within 5 s", "code": "turn_timeout",
                            "type": "turn_timeout"}
    assert not result.retired


@pytest.mark.parametrize("after", ["a tool", "commentary", "another item"])
def test_a_message_followed_by_more_is_not_the_final_answer(after: str) -> None:
    fed = started()
    if after == "commentary":
        fed.feed(L.agent_started(), L.item_completed({"type": "agentMessage", "id": "msg_1",
                                                      "text": "Let me look.",
                                                      "phase": "commentary"}))
    else:
        fed.feed(L.agent_started(), L.agent_completed("Let me look."))
        fed.feed(L.command_started() if after == "a tool" else L.item_started(
            {"type": "reasoning", "id": "rs_1"}))
    fed.feed(TurnTimeout(5.0), L.turn_completed("interrupted"))
    assert fed.result().outcome == "error"


def test_a_limit_codex_never_answers_retires_the_session() -> None:
    fed = started()
    fed.feed(TurnTimeout(5.0), InterruptTimeout(2.0))
    result = fed.result()
    assert result.outcome == "error" and result.retired and result.error["code"] == "turn_timeout"


def test_a_limit_during_the_handshake_ends_the_queued_turn() -> None:
    fed = Fed()
    fed.feed(TurnRequest("hi"), TurnTimeout(5.0))
    assert fed.result().outcome == "error" and not fed.result().retired


def test_a_caller_interrupt_then_the_limit_stays_interrupted() -> None:
    fed = started()
    fed.feed(Interrupt(), TurnTimeout(5.0), L.turn_completed("interrupted"))
    assert fed.result().outcome == "interrupted"


# -- closing the session -----------------------------------------------------------------------


def test_close_during_a_turn_ends_it_session_closed_and_retires() -> None:
    fed = started()
    fed.feed(L.agent_started(), L.agent_delta("The c"), Close())
    result = fed.result()
    assert result.outcome == "error" and result.retired and result.output_text == "The c"
    assert result.error is not None and result.error["code"] == "session_closed"
    assert fed.effects("retire") == [{"reason": "session_closed"}]
    assert fed.path("app_turn")[-1] == ("streaming", "retire", "close")


def test_close_between_turns_retires_the_session() -> None:
    fed = started()
    fed.feed(L.turn_completed("completed"), Close())
    assert fed.session.state == "retired" and fed.effects("retire") == [{"reason": "close"}]


# -- turn/completed lines that end nothing -----------------------------------------------------


@pytest.mark.parametrize("line", [
    L.notification("turn/completed", {"threadId": L.THREAD, "turn": {"id": L.TURN}}),
    L.notification("turn/completed", {"threadId": L.THREAD, "turn": {"id": L.TURN,
                                                                     "status": None}}),
    L.notification("turn/completed", {"threadId": L.THREAD, "turn": {"id": L.TURN,
                                                                     "status": "inProgress"}}),
], ids=["no_status", "null_status", "unknown_status"])
def test_a_malformed_turn_completed_never_ends_the_turn(line: str) -> None:
    fed = started()
    fed.feed(L.agent_started(), L.agent_delta("Paris."), line)
    assert not fed.turn.is_final and fed.turn.malformed_completions == 1
    fed.feed(L.turn_completed("completed"))
    assert fed.result().outcome == "completed" and fed.result().error is None


@pytest.mark.parametrize("line", [
    L.turn_completed("completed", turn="turn-other"),
    L.turn_completed("failed", thread=OTHER_THREAD),
    L.notification("turn/completed", {"threadId": L.THREAD, "turn": {"status": "completed"}}),
], ids=["another_turn", "another_thread_same_turn_id", "no_turn_id"])
def test_a_turn_completed_for_another_turn_or_thread_never_ends_the_turn(line: str) -> None:
    fed = started()
    fed.feed(line)
    assert not fed.turn.is_final and fed.turn.foreign_completions == 1
    assert fed.path("app_turn")[-1] == ("awaiting_created", "streaming", "started")


def test_a_session_snapshot_keeps_the_thread_s_instructions_usage_and_resume() -> None:
    fed = Fed(AppSession(attrs.evolve(CONFIG, thread_id=L.THREAD, developer_instructions="x")))
    fed.feed(TurnRequest("hi"), *L.handshake(), L.turn_start_response(3))
    fed.feed(L.token_usage(last=(1, 0, 1, 0), total=(5, 0, 3, 0)), L.turn_completed("completed"))
    again = AppSession.restore(fed.session.config, fed.session.snapshot())
    assert again.thread_resumed and again.thread_instructions == "x"
    assert again.usage_total is not None and again.usage_total["total_tokens"] == 8
    with pytest.raises(ValueError):
        AppSession.restore(CONFIG, {**fed.session.snapshot(), "usage_total": {"x": 1}})


def test_a_config_round_trips_through_a_trace_header() -> None:
    config = SessionConfig(cwd="/w", thread_id="t", developer_instructions="d",
                           dynamic_tools=(TOOL,))
    assert SessionConfig.from_json(config.to_json()) == config
    assert SessionConfig.from_json({"cwd": "/w"}) == SessionConfig(cwd="/w")  # an older header
    with pytest.raises(TypeError):
        SessionConfig.from_json({"cwd": "/w", "dynamic_tools": "lookup"})
