"""The rest of the protocol (contract v3) against the real `codex app-server` 0.169.0, offline.

Each test runs the real binary against the built-in simulator (as tests/test_app_server_real.py
does) and checks the rule on what the session returns, on what codex sent the model (the
simulator's request log: where developer instructions land, how a client tool is offered and its
output comes back, what a steer and a compaction ask, what a resumed thread re-sends) and on the
trace, which must replay identically. The traces named `fixture=` are kept in
replay_fixtures/codex_app_server/. Without a codex binary these tests skip.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

import engine
from app_support import TEXT, codex, group_members, harness, process_gone
from support import within

__all__ = ["codex"]  # the fixture, imported for pytest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("codex")]

TOOL = {"name": "lookup_weather", "description": "The weather in a city, now.",
        "inputSchema": {"type": "object", "properties": {"city": {"type": "string"}},
                        "required": ["city"]}}
LONG = "The capital of France is Paris, a city on the Seine."
#: A compaction's request ends with this (codex's own prompt).
COMPACTION_PROMPT = "You are performing a CONTEXT CHECKPOINT COMPACTION"
#: Some id codex has no rollout for.
UNKNOWN_THREAD = "01a24e4b-0000-7000-8000-000000000000"


def messages_of(request: Any, role: str) -> list[str]:
    """The texts of the `role` messages of a request's input, in order."""
    out = []
    for item in request.body["input"]:
        if item.get("type") == "message" and item.get("role") == role:
            out.append("".join(part.get("text", "") for part in item["content"]))
    return out


def items_of(request: Any, kind: str) -> list[dict[str, Any]]:
    return [item for item in request.body["input"] if item.get("type") == kind]


def call(name: str, arguments: dict[str, Any], call_id: str) -> dict[str, Any]:
    return {"tool_call": {"name": name, "arguments": json.dumps(arguments), "call_id": call_id}}


def stalls_mid_answer(then: str) -> dict[str, Any]:
    """A scenario: the first answer stops half-way for 20 s; the next request gets `then`."""
    return {"reply": [{"nth": 1, "text": LONG, "stall_s": 20, "stall_after": 6},
                      {"text": then}]}


class FromElsewhere:
    """Runs `action` once, on a thread of its own, at the first text delta (as a host's other
    thread would, while the turn streams)."""

    def __init__(self, action: Callable[[], Any]) -> None:
        self.action = action
        self.results: list[Any] = []
        self.thread: threading.Thread | None = None

    def __call__(self, delta: str) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=lambda: self.results.append(self.action()),
                                           name="host-thread")
            self.thread.start()

    def join(self) -> list[Any]:
        assert self.thread is not None
        self.thread.join(5)
        return self.results


# -- resuming a thread -------------------------------------------------------------------------


def test_a_second_process_resumes_the_thread_and_codex_resends_it(tmp_path: Path) -> None:
    scenario = {"reply": [{"nth": 1, "text": TEXT}, {"text": "It is on the Seine."}]}
    with harness(tmp_path, scenario) as h:
        first = h.turn()
        h.session.close()
        assert h.session.thread_id == first.result.thread_id  # kept to continue it elsewhere
        again = h.another_session(thread_id=h.session.thread_id)
        assert again.thread_id == first.result.thread_id
        try:
            resumed = h.turn("Which river?", session=again, fixture="thread_resumed")
            assert resumed.trace_lines()[0]["config"]["thread_id"] == first.result.thread_id
        finally:
            again.close()
        second = h.requests[1]
    result = resumed.result
    assert result.outcome == "completed" and result.output_text == "It is on the Seine."
    assert result.thread_resumed and result.thread_id == first.result.thread_id
    # the new process sent the model the earlier turn, from the thread's rollout on disk
    assert "What is the capital of France?" in messages_of(second, "user")
    assert TEXT in messages_of(second, "assistant")
    assert messages_of(second, "user")[-1] == "Which river?"
    sent = resumed.sent()
    assert [m.get("method") for m in sent[:3]] == ["initialize", "initialized", "thread/resume"]
    assert sent[2]["params"]["threadId"] == first.result.thread_id


def test_a_refused_resume_starts_a_new_thread(tmp_path: Path) -> None:
    with harness(tmp_path, {"reply": [{"text": TEXT}]}, thread_id=UNKNOWN_THREAD) as h:
        turn = h.turn(fixture="thread_resume_refused")
        assert len(h.requests) == 1
    result = turn.result
    assert result.outcome == "completed" and not result.thread_resumed
    assert result.thread_id not in (None, UNKNOWN_THREAD)
    refusal = [m for m in turn.received() if m.get("id") == 2 and "error" in m]
    assert refusal and "no rollout found" in refusal[0]["error"]["message"]


# -- developer instructions --------------------------------------------------------------------


def test_developer_instructions_reach_the_model_as_a_developer_message(tmp_path: Path) -> None:
    instructions = "Answer in French. (streamfsm instructions)"
    with harness(tmp_path, {"reply": [{"text": TEXT}]},
                 developer_instructions=instructions) as h:
        turn = h.turn(fixture="developer_instructions")
        (request,) = h.requests
    assert turn.result.outcome == "completed"
    developer = [item for item in request.body["input"]
                 if item.get("type") == "message" and item.get("role") == "developer"]
    # codex's own instructions first; the client's open the second developer message
    assert len(developer) == 2 and developer[1]["content"][0]["text"] == instructions
    assert instructions not in json.dumps(developer[0]) and not request.body.get("instructions")


def test_other_instructions_between_turns_start_a_new_thread(tmp_path: Path) -> None:
    scenario = {"reply": [{"nth": 1, "text": TEXT}, {"text": "Paris."}]}
    with harness(tmp_path, scenario, developer_instructions="Answer at length.") as h:
        first = h.turn()
        pid = h.session.pid
        h.session.developer_instructions = "Answer in one word."
        second = h.turn("Again?", fixture="instructions_changed_new_thread")
        assert h.session.pid == pid  # the same process, a new thread
        request = h.requests[1]
    assert second.result.outcome == "completed"
    assert second.result.thread_id != first.result.thread_id
    assert [m.get("method") for m in second.sent()][:2] == ["thread/start", "turn/start"]
    assert messages_of(request, "developer")[1].startswith("Answer in one word.")
    assert TEXT not in json.dumps(request.body["input"])  # nothing of the first thread


# -- the client's own tools --------------------------------------------------------------------


def test_a_client_tool_is_offered_called_and_its_output_reaches_the_model(tmp_path: Path) -> None:
    calls: list[engine.ToolCall] = []

    def weather(tool_call: engine.ToolCall) -> str:
        calls.append(tool_call)
        return "sunny, 21 C"

    scenario = {"reply": [{"when": "tool_output", "text": "It is sunny in Paris."},
                          call("lookup_weather", {"city": "Paris"}, "call_w1")]}
    with harness(tmp_path, scenario, tools=[TOOL], tool_handler=weather) as h:
        turn = h.turn("Weather in Paris?", fixture="client_tool_answered")
        first, second = h.requests
    result = turn.result
    assert result.outcome == "completed" and result.output_text == "It is sunny in Paris."
    (asked,) = calls
    assert asked == engine.ToolCall("call_w1", "lookup_weather", {"city": "Paris"},
                                    result.thread_id, result.turn_id)
    assert result.tool_calls == calls and result.tool_iterations == 1
    offered = [tool for tool in first.body["tools"] if tool.get("name") == "lookup_weather"]
    assert offered == [{"type": "function", "name": "lookup_weather",
                        "description": "The weather in a city, now.", "strict": False,
                        "parameters": TOOL["inputSchema"]}]
    assert items_of(second, "function_call_output") == [
        {"type": "function_call_output", "id": items_of(second, "function_call_output")[0]["id"],
         "call_id": "call_w1", "output": "sunny, 21 C"}]
    initialize = turn.sent()[0]
    assert initialize["params"]["capabilities"] == {"experimentalApi": True}
    assert result.usage is not None and result.usage["total_tokens"] > 0
    assert result.model_requests == 2


def test_a_raising_tool_is_answered_as_a_failure_and_the_turn_goes_on(tmp_path: Path) -> None:
    def broken(tool_call: engine.ToolCall) -> str:
        raise ConnectionError("the weather service is down")

    scenario = {"reply": [{"when": "tool_output", "text": "I could not get the weather."},
                          call("lookup_weather", {"city": "Paris"}, "call_w1")]}
    with harness(tmp_path, scenario, tools=[TOOL], tool_handler=broken) as h:
        turn = h.turn("Weather in Paris?", fixture="client_tool_raises")
        second = h.requests[1]
    result = turn.result
    assert result.outcome == "completed" and result.output_text == "I could not get the weather."
    answer = [m for m in turn.sent() if m.get("id") == 0 and "result" in m]
    assert answer == [{"jsonrpc": "2.0", "id": 0, "result": {
        "contentItems": [{"type": "inputText", "text": "the weather service is down"}],
        "success": False}}]
    assert items_of(second, "function_call_output")[0]["output"] == "the weather service is down"
    assert result.messages[1]["content"] == "[error] the weather service is down"


def test_a_call_id_the_model_repeats_is_answered_again_without_a_second_call(
    tmp_path: Path,
) -> None:
    calls: list[engine.ToolCall] = []
    scenario = {"reply": [
        {"nth": 1, **call("lookup_weather", {"city": "Paris"}, "call_w1")},
        {"nth": 2, **call("lookup_weather", {"city": "Paris"}, "call_w1")},
        {"text": "Sunny, as I said."}]}
    with harness(tmp_path, scenario, tools=[TOOL],
                 tool_handler=lambda c: calls.append(c) or f"sunny ({len(calls)})") as h:
        turn = h.turn("Weather in Paris?", fixture="client_tool_repeated_call_id")
        third = h.requests[2]
    assert turn.result.outcome == "completed" and len(calls) == 1
    asked = [m for m in turn.received() if m.get("method") == "item/tool/call"]
    assert [m["params"]["callId"] for m in asked] == ["call_w1", "call_w1"]
    assert [m["id"] for m in asked] == [0, 1]  # codex asks again, with a new request id
    answers = [m["result"] for m in turn.sent() if m.get("id") in (0, 1) and "result" in m]
    assert len(answers) == 2 and answers[0] == answers[1]
    assert [i["output"] for i in items_of(third, "function_call_output")] == ["sunny (1)"] * 2


# -- usage ----------------------------------------------------------------------------------------


def test_usage_is_counted_per_turn_and_for_the_thread(tmp_path: Path) -> None:
    scenario = {"reply": [{"nth": 1, "text": TEXT}, {"text": "It is on the Seine."}]}
    with harness(tmp_path, scenario) as h:
        first = h.turn()
        second = h.turn("Which river?", fixture="usage_second_turn")
    one, two = first.result.usage, second.result.usage
    assert one is not None and two is not None
    # the simulator reports 24 input tokens for every request (its response.completed usage)
    assert one["last"]["input_tokens"] == two["last"]["input_tokens"] == 24
    assert two["input_tokens"] == two["last"]["input_tokens"]  # one request in the turn
    assert two["thread"]["total_tokens"] == one["total_tokens"] + two["total_tokens"]
    assert two["model_context_window"] > 0
    for key in ("input_tokens", "cached_input_tokens", "output_tokens",
                "reasoning_output_tokens", "total_tokens"):
        assert key in two and key in two["thread"] and key in two["last"]


# -- compaction ----------------------------------------------------------------------------------


def test_compact_asks_codex_for_a_summary_and_the_thread_goes_on_from_it(tmp_path: Path) -> None:
    summary = "The user asked for the capital of France: Paris."
    scenario = {"reply": [{"nth": 1, "text": TEXT}, {"nth": 2, "text": summary},
                          {"text": "It is on the Seine."}]}
    with harness(tmp_path, scenario) as h:
        first = h.turn()
        compaction = h.compact(fixture="compaction")
        after = h.turn("Which river?")
        _, asked, next_turn = h.requests
    result = compaction.result
    assert result.outcome == "completed" and result.compacted
    assert result.thread_id == first.result.thread_id and result.turn_id != first.result.turn_id
    assert [m.get("method") for m in compaction.sent()] == ["thread/compact/start"]
    assert messages_of(asked, "user")[-1].startswith(COMPACTION_PROMPT)
    assert TEXT in messages_of(asked, "assistant")  # the conversation to summarise
    assert after.result.outcome == "completed"
    assert any(summary in text for text in messages_of(next_turn, "user"))
    assert TEXT not in messages_of(next_turn, "assistant")  # the summary replaced the answer


def test_a_compaction_codex_runs_inside_a_turn_is_reported(tmp_path: Path) -> None:
    # a token limit below the thread's usage makes codex compact before the next model request
    scenario = {"reply": [{"nth": 1, "text": TEXT}, {"nth": 2, "text": "Summary: Paris."},
                          {"text": "It is on the Seine."}]}
    with harness(tmp_path, scenario, config={"model_auto_compact_token_limit": 20}) as h:
        first = h.turn()
        second = h.turn("Which river?", fixture="compaction_inside_turn")
        _, asked, answered = h.requests
    assert not first.result.compacted
    result = second.result
    assert result.compacted and result.outcome == "completed"
    assert result.output_text == "It is on the Seine."
    assert messages_of(asked, "user")[-1].startswith(COMPACTION_PROMPT)
    assert messages_of(answered, "user")[-1] == "Which river?"
    items = [m["params"]["item"]["type"] for m in second.received()
             if m.get("method") == "item/completed"]
    assert items[0] == "contextCompaction"  # before the turn's own input


def test_compact_before_any_thread_raises(tmp_path: Path) -> None:
    with harness(tmp_path, {"reply": [{"text": TEXT}]}) as h:
        with pytest.raises(RuntimeError, match="no thread to compact"):
            h.session.compact()


# -- steering ------------------------------------------------------------------------------------


def test_steer_drops_the_answer_in_progress_and_asks_again_with_the_new_input(
    tmp_path: Path,
) -> None:
    with harness(tmp_path, stalls_mid_answer("Paris.")) as h:
        steer = FromElsewhere(lambda: h.session.steer("Answer in one word."))
        turn = h.turn(on_text=steer, fixture="steer_mid_answer")
        accepted = steer.join()
        assert h.session.steer("Too late.") is False  # no turn runs
        second = h.requests[1]
    result = turn.result
    assert accepted == [True] and result.outcome == "completed" and turn.elapsed < within(5.0, before=20.0)
    assert result.output_text == "Paris." and turn.deltas[-1] == "Paris."
    shown = "".join(turn.deltas[:-1])
    assert shown and LONG.startswith(shown)  # what the user saw of the dropped answer
    assert result.messages == [{"role": "assistant", "content": shown},
                               {"role": "assistant", "content": "Paris."}]
    steer = [m for m in turn.sent() if m.get("method") == "turn/steer"]
    assert steer[0]["params"]["expectedTurnId"] == result.turn_id
    assert messages_of(second, "user")[-2:] == ["What is the capital of France?",
                                                "Answer in one word."]
    assert messages_of(second, "assistant") == []  # the dropped answer is not in the thread


# -- the turn's wall-clock limit -----------------------------------------------------------------


def test_a_limit_after_the_final_message_keeps_the_answer(tmp_path: Path) -> None:
    # the stream stalls after the message is done and before response.completed
    scenario = {"reply": [{"nth": 1, "text": "Final answer here.", "stall_s": 20,
                           "stall_after": 10}, {"text": "Next."}]}
    with harness(tmp_path, scenario, turn_timeout_s=1.5) as h:
        turn = h.turn(fixture="turn_timeout_after_answer")
        after = h.turn("Next?")
    result = turn.result
    assert result.outcome == "completed" and result.output_text == "Final answer here."
    assert result.error is None and not result.retired and 1.4 < turn.elapsed < within(4.0, before=20.0)
    assert any(m.get("method") == "turn/interrupt" for m in turn.sent())
    assert after.result.outcome == "completed" and after.result.output_text == "Next."


def test_a_limit_before_the_answer_ends_the_turn_turn_timeout(tmp_path: Path) -> None:
    with harness(tmp_path, stalls_mid_answer("Next."), turn_timeout_s=1.5) as h:
        turn = h.turn(fixture="turn_timeout_before_answer")
        pid = h.session.pid
        after = h.turn("Next?")
        assert h.session.pid == pid  # codex answered the interrupt: the session lives on
    result = turn.result
    assert result.outcome == "error" and not result.retired and 1.4 < turn.elapsed < within(4.0, before=20.0)
    assert result.error is not None and result.error["code"] == "turn_timeout"
    assert result.output_text == "".join(turn.deltas) != ""
    assert after.result.outcome == "completed"


# -- closing the session -------------------------------------------------------------------------


def test_close_from_another_thread_ends_the_turn_and_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    with harness(tmp_path, stalls_mid_answer("A new process answers.")) as h:
        pids: list[int | None] = []
        close = FromElsewhere(lambda: pids.append(h.session.pid) or h.session.close())
        before = {thread.name for thread in threading.enumerate()}
        turn = h.turn(on_text=close, fixture="close_during_turn")
        close.join()
        (pid,) = pids
        assert pid is not None and h.session.pid is None
        assert process_gone(pid) and group_members(pid) == []
        left = {t.name for t in threading.enumerate()} - before
        assert not any(name.startswith("codex-") for name in left), left
        again = h.turn("Are you there?")
    result = turn.result
    assert result.outcome == "error" and result.retired and turn.elapsed < within(5.0, before=20.0)
    assert result.error is not None and result.error["code"] == "session_closed"
    assert result.output_text == "".join(turn.deltas) != ""
    assert again.result.outcome == "completed"
    assert again.result.output_text == "A new process answers."


def test_close_twice_and_between_turns_is_harmless(tmp_path: Path) -> None:
    with harness(tmp_path, {"reply": [{"text": TEXT}]}) as h:
        h.session.close()
        h.session.close()
        assert h.turn().result.outcome == "completed"
        began = time.monotonic()
        h.session.close()
        h.session.close()
        assert time.monotonic() - began < within(5.0) and h.session.pid is None
