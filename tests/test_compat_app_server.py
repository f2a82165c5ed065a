"""`engine.compat.run_codex_app_server_turn`: the seed's signature and return dict over
`CodexSession`, with the real codex app-server where it can show the rule and the scripted fake
for the lazily created session (which reads STREAMFSM_CODEX from the environment)."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.compat import run_codex_app_server_turn
from engine.testing.fake_app_server import script_command
from app_support import TEXT, codex, harness, tool_then_answer

__all__ = ["codex"]

THREAD, TURN = "thread-compat", "turn-compat"
HANDSHAKE = [
    {"expect": "initialize"}, {"send": {"id": "$id:initialize", "result": {}}},
    {"expect": "thread/start"}, {"send": {"id": "$id:thread/start",
                                          "result": {"thread": {"id": THREAD}}}},
    {"expect": "turn/start"}, {"send": {"id": "$id:turn/start",
                                        "result": {"turn": {"id": TURN}}}},
]


def note(method: str, **params: Any) -> dict[str, Any]:
    return {"send": {"method": method, "params": {"threadId": THREAD, "turnId": TURN, **params}}}


def completed(status: str, **turn: Any) -> dict[str, Any]:
    return {"send": {"method": "turn/completed", "params": {
        "threadId": THREAD, "turn": {"id": TURN, "status": status, "items": [], **turn}}}}


class Agent:
    """What the seed's function uses of the agent."""

    def __init__(self, **attributes: Any) -> None:
        self.deltas: list[str] = []
        self.reasoning: list[str] = []
        self.synced: list[dict[str, Any]] = []
        self.reviews: list[dict[str, Any]] = []
        self._interrupt_requested = False
        self._iters_since_skill = 0
        self._skill_nudge_interval = 0
        self.valid_tool_names = {"skill_manage"}
        self.session_cwd: str | None = None
        self.__dict__.update(attributes)

    def _fire_stream_delta(self, text: str) -> None:
        self.deltas.append(text)

    def _fire_reasoning_delta(self, text: str) -> None:
        self.reasoning.append(text)

    def _sync_external_memory_for_turn(self, **kwargs: Any) -> None:
        self.synced.append(kwargs)

    def _spawn_background_review(self, **kwargs: Any) -> None:
        self.reviews.append(kwargs)


def call(agent: Agent, messages: list[dict[str, Any]], text: str = "hi", **kw: Any) -> dict[str, Any]:
    messages.append({"role": "user", "content": text})
    return run_codex_app_server_turn(agent, user_message=text, original_user_message=text,
                                     messages=messages, effective_task_id="task-1", **kw)


@pytest.mark.slow
@pytest.mark.usefixtures("codex")
def test_a_text_turn_returns_the_seed_dict_once(tmp_path: Path) -> None:
    with harness(tmp_path, {"reply": [{"text": TEXT}]}) as h:
        agent = Agent(_codex_session=h.session)
        messages: list[dict[str, Any]] = []
        outcome = call(agent, messages, trace=tmp_path / "compat.jsonl")
        thread = h.session.thread_id
    completion = outcome["completion_tokens"]
    assert outcome == {
        "final_response": TEXT, "messages": messages, "api_calls": 1, "completed": True,
        "partial": False, "interrupted": False, "error": None,
        "codex_thread_id": thread, "codex_turn_id": outcome["codex_turn_id"],
        # the seed's successor's usage keys; the simulator reports 24 input tokens a request
        "prompt_tokens": 24, "completion_tokens": completion, "total_tokens": 24 + completion,
        "input_tokens": 24, "output_tokens": completion, "cache_read_tokens": 0,
        "cache_write_tokens": 0, "reasoning_tokens": 0, "last_prompt_tokens": 24,
    }
    assert thread and outcome["codex_turn_id"] and completion > 0
    assert messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": TEXT}]
    assert "".join(agent.deltas) == TEXT  # delivered once, never again as an interim message
    assert [s["final_response"] for s in agent.synced] == [TEXT] and agent.reviews == []
    assert engine.replay(tmp_path / "compat.jsonl").identical


@pytest.mark.slow
@pytest.mark.usefixtures("codex")
def test_tool_iterations_feed_the_skill_nudge(tmp_path: Path) -> None:
    with harness(tmp_path, tool_then_answer('{"cmd":"echo streamfsm-tool-ok"}')) as h:
        agent = Agent(_codex_session=h.session, _skill_nudge_interval=1)
        messages: list[dict[str, Any]] = []
        outcome = call(agent, messages, should_review_memory=False)
    assert outcome["completed"] and outcome["api_calls"] == 2
    # usage covers both model requests of the turn; the context is the last one's
    assert outcome["prompt_tokens"] == 48 and outcome["last_prompt_tokens"] == 24
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert agent._iters_since_skill == 0  # reached the interval: reset, review asked
    assert agent.reviews == [{"messages_snapshot": messages, "review_memory": False,
                              "review_skills": True}]


def _fake_codex(tmp_path: Path, steps: list[dict[str, Any]]) -> Path:
    """An executable standing in for `codex` that plays `steps` whatever its arguments."""
    script = tmp_path / "steps.json"
    script.write_text(json.dumps(steps))
    argv = script_command(str(script), str(tmp_path / "client.jsonl"))
    wrapper = tmp_path / "codex"
    wrapper.write_text("#!/bin/sh\nexec " + " ".join(f"'{a}'" for a in argv) + "\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    return wrapper


def test_the_session_is_created_lazily_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = [*HANDSHAKE,
             {"send": {"id": 0, "method": "item/commandExecution/requestApproval", "params": {
                 "threadId": THREAD, "turnId": TURN, "itemId": "c1", "command": "ls"}}},
             {"expect": "response"},
             note("item/agentMessage/delta", itemId="m", delta="ok"),
             completed("completed")]
    monkeypatch.setenv("STREAMFSM_CODEX", str(_fake_codex(tmp_path, steps)))
    asked: list[engine.ApprovalRequest] = []
    agent = Agent(session_cwd=str(tmp_path),
                  codex_approval_callback=lambda r: asked.append(r) or "accept")
    outcome = call(agent, [])
    session = agent._codex_session
    try:
        assert isinstance(session, engine.CodexSession) and session.cwd == str(tmp_path)
        assert outcome["completed"] and outcome["final_response"] == "ok"
        assert [r.command for r in asked] == ["ls"]
    finally:
        session.close()


def test_a_failed_turn_is_not_completed_and_keeps_the_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = [*HANDSHAKE, note("item/agentMessage/delta", itemId="m", delta="half"),
             completed("failed", error={"message": "high demand",
                                        "codexErrorInfo": "internalServerError"})]
    monkeypatch.setenv("STREAMFSM_CODEX", str(_fake_codex(tmp_path, steps)))
    agent = Agent(session_cwd=str(tmp_path))
    messages: list[dict[str, Any]] = []
    outcome = call(agent, messages, should_review_memory=True)
    try:
        assert outcome["completed"] is False and outcome["partial"] is True
        assert outcome["error"] == "high demand" and outcome["final_response"] == "half"
        assert outcome["codex_thread_id"] == THREAD and "prompt_tokens" not in outcome  # no usage
        assert messages[-1] == {"role": "assistant", "content": "half"}
        assert agent._codex_session is not None  # the thread recovers from provider errors
        assert agent.synced == []  # memory is synced only for completed turns
        assert len(agent.reviews) == 1  # final text, no interrupt, review asked
    finally:
        agent._codex_session.close()


def test_a_retired_session_is_dropped_and_the_next_turn_starts_anew(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = [*HANDSHAKE, {"exit": 0}]
    monkeypatch.setenv("STREAMFSM_CODEX", str(_fake_codex(tmp_path, steps)))
    agent = Agent(session_cwd=str(tmp_path))
    outcome = call(agent, [])
    assert outcome["completed"] is False and "exited with status 0" in outcome["error"]
    assert agent._codex_session is None
    again = call(agent, [])
    assert again["completed"] is False and agent._codex_session is None


def test_the_agent_interrupt_flag_interrupts_the_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = [*HANDSHAKE, note("item/agentMessage/delta", itemId="m", delta="partial"),
             {"expect": "turn/interrupt"}, {"send": {"id": "$id:turn/interrupt", "result": {}}},
             completed("interrupted")]
    monkeypatch.setenv("STREAMFSM_CODEX", str(_fake_codex(tmp_path, steps)))
    agent = Agent(session_cwd=str(tmp_path))
    agent._fire_stream_delta = lambda text: setattr(agent, "_interrupt_requested", True)  # type: ignore[method-assign]
    outcome = call(agent, [])
    try:
        assert outcome["interrupted"] is True and outcome["completed"] is False
        assert outcome["final_response"] == "partial" and outcome["error"] is None
        assert agent.synced == []
    finally:
        agent._codex_session.close()


def test_trace_dir_attribute_records_each_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = [*HANDSHAKE, completed("completed")]
    monkeypatch.setenv("STREAMFSM_CODEX", str(_fake_codex(tmp_path, steps)))
    traces = tmp_path / "traces"
    traces.mkdir()
    agent = Agent(session_cwd=str(tmp_path), streamfsm_trace_dir=str(traces))
    call(agent, [])
    agent._codex_session.close()
    (written,) = traces.iterdir()
    assert written.name.startswith("run_codex_app_server_turn-")
    assert engine.replay(written).identical


def test_no_codex_binary_is_an_error_result_not_an_exception(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMFSM_CODEX", str(tmp_path / "missing"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    agent = Agent(session_cwd=str(tmp_path))
    outcome = call(agent, [])
    assert outcome["completed"] is False and "no codex binary found" in outcome["error"]
    assert agent._codex_session is None
    assert sys.executable and os.environ["PATH"] == str(tmp_path)
