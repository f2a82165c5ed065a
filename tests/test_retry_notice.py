"""`Callbacks(on_retry=...)`: the caller hears an `engine.RetryNotice` before every attempt after
the first (a UI's "Reconnecting... 2/3"), from every driver: `run_turn`, `arun_turn`, the seed's
functions in `engine.compat`, and `CodexSession` before a new app-server process after a
retirement. Real turns: the openai client over loopback HTTP to the built-in simulator, the
scripted app-server for the codex sessions."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path
from typing import Any

import attrs
import openai
import pytest

import engine
from engine.compat import run_codex_app_server_turn, run_codex_stream
from engine.simulator.server import ResponsesSimulator
from engine.simulator.shapes import SHAPES
from engine.testing.fake_app_server import script_command

REQUEST = {"model": "gpt-5", "input": "What is the capital of France?"}


def _turn(shape: str, **options: Any) -> tuple[engine.TurnResult, list[tuple[str, Any]]]:
    """Run `shape` through `run_turn`; what the callbacks heard, in order."""
    heard: list[tuple[str, Any]] = []
    callbacks = engine.Callbacks(on_text_delta=lambda text: heard.append(("text", text)),
                                 on_retry=lambda notice: heard.append(("retry", notice)))
    request = dict(REQUEST, background=True) if "background" in shape else REQUEST
    with ResponsesSimulator(SHAPES[shape]) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
        result = engine.run_turn(client, request, callbacks=callbacks, **options)
    return result, heard


def _notices(heard: list[tuple[str, Any]]) -> list[engine.RetryNotice]:
    return [notice for kind, notice in heard if kind == "retry"]


def test_a_dropped_stream_is_announced_before_the_second_attempt_starts() -> None:
    result, heard = _turn("drop_then_retry")
    assert result.outcome == "completed"
    assert _notices(heard) == [engine.RetryNotice(2, "stream", "drop", 0.0)]
    at = heard.index(("retry", _notices(heard)[0]))
    assert [kind for kind, _ in heard[:at]] == ["text", "text"]  # the first attempt's text
    assert all(kind == "text" for kind, _ in heard[at + 1:])


def test_each_new_attempt_names_its_kind_and_why_the_one_before_ended() -> None:
    result, heard = _turn("drop_every_attempt")
    assert [a.kind for a in result.attempts] == ["stream", "stream", "fallback"]
    assert _notices(heard) == [engine.RetryNotice(2, "stream", "drop", 0.0),
                               engine.RetryNotice(3, "fallback", "drop", 0.0)]


def test_a_resume_is_announced_as_one() -> None:
    result, heard = _turn("background_drop_then_resume")
    assert result.outcome == "completed"
    assert _notices(heard) == [engine.RetryNotice(2, "resume", "drop", 0.0)]


def test_an_http_retry_says_the_wait_the_turn_then_waits(tmp_path: Path) -> None:
    trace = tmp_path / "turn.jsonl"
    result, heard = _turn("http_503_then_ok", policy=engine.TurnPolicy(max_http_retries=2),
                          trace=trace)
    assert result.outcome == "completed"
    waits = [record["data"] for record in map(json.loads, trace.read_text().splitlines())
             if record.get("effect") == "wait"]
    notices = _notices(heard)
    assert [(n.number, n.kind, n.reason) for n in notices] == [(2, "stream", "http_503"),
                                                               (3, "stream", "http_503")]
    assert [n.wait_s for n in notices] == waits and all(w > 0 for w in waits)
    assert engine.replay(trace).identical  # the notices are no records of the turn


def test_a_turn_without_retries_hears_nothing() -> None:
    result, heard = _turn("happy_text")
    assert result.outcome == "completed" and _notices(heard) == []


def test_a_raising_on_retry_is_fenced() -> None:
    def broken(notice: engine.RetryNotice) -> None:
        raise RuntimeError("the UI fell over")

    with ResponsesSimulator(SHAPES["drop_then_retry"]) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
        result = engine.run_turn(client, REQUEST, callbacks=engine.Callbacks(on_retry=broken))
    assert result.outcome == "completed" and len(result.attempts) == 2


def test_the_notice_is_a_frozen_record_and_on_retry_must_be_callable() -> None:
    notice = engine.RetryNotice(2, "stream", "drop", 0.5)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        notice.number = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        engine.Callbacks(on_retry="not callable")  # type: ignore[arg-type]


def test_arun_turn_announces_retries_too() -> None:
    notices: list[engine.RetryNotice] = []

    async def main() -> engine.TurnResult:
        with ResponsesSimulator(SHAPES["drop_then_retry"]) as sim:
            client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
            try:
                return await engine.arun_turn(client, REQUEST,
                                              callbacks=engine.Callbacks(on_retry=notices.append))
            finally:
                await client.close()

    assert asyncio.run(main()).outcome == "completed"
    assert notices == [engine.RetryNotice(2, "stream", "drop", 0.0)]


class _SeedAgent:
    """The seed's agent, as `engine.compat` uses it."""

    def __init__(self, client: Any) -> None:
        self._interrupt_requested = False
        self.client = client
        self.deltas: list[str] = []

    def _touch_activity(self, message: str) -> None:
        pass

    def _fire_stream_delta(self, text: str) -> None:
        self.deltas.append(text)

    def _fire_reasoning_delta(self, text: str) -> None:
        pass

    def _ensure_primary_openai_client(self, *, reason: str) -> Any:
        return self.client


def test_the_seed_functions_announce_retries_through_a_keyword() -> None:
    notices: list[engine.RetryNotice] = []
    with ResponsesSimulator(SHAPES["drop_every_attempt"]) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
        agent = _SeedAgent(client)
        with pytest.raises(Exception):
            run_codex_stream(agent, dict(REQUEST), on_retry=notices.append)
    assert [(n.number, n.kind, n.reason) for n in notices] == [(2, "stream", "drop"),
                                                               (3, "fallback", "drop")]


# -- codex app-server sessions ---------------------------------------------------------------
HANDSHAKE: list[dict[str, Any]] = [
    {"expect": "initialize"}, {"send": {"id": "$id:initialize", "result": {}}},
    {"expect": "thread/start"}, {"send": {"id": "$id:thread/start",
                                          "result": {"thread": {"id": "thread-1"}}}},
]
REFUSED_TURN: list[dict[str, Any]] = [
    *HANDSHAKE, {"expect": "turn/start"},
    {"send": {"id": "$id:turn/start", "error": {"code": -32600, "message": "bad thread"}}},
]


def test_a_codex_session_announces_the_new_process_after_a_retirement(tmp_path: Path) -> None:
    script = tmp_path / "steps.json"
    script.write_text(json.dumps(REFUSED_TURN))
    notices: list[engine.RetryNotice] = []
    callbacks = engine.Callbacks(on_retry=notices.append)
    with engine.CodexSession(command=script_command(str(script)), cwd=tmp_path,
                             request_timeout_s=5.0) as session:
        first = session.run_turn("hi", callbacks=callbacks)
        assert first.retired and notices == []  # the first process is no retry
        second = session.run_turn("hi", callbacks=callbacks)
        third = session.run_turn("hi", callbacks=callbacks)
    assert second.retired and third.retired
    assert [(n.number, n.kind, n.wait_s) for n in notices] == [(2, "stream", 0.0),
                                                               (3, "stream", 0.0)]
    assert notices[0].reason and notices[0].reason != "exited"


def test_the_seed_app_server_turn_announces_the_session_it_starts_after_a_retirement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "steps.json"
    script.write_text(json.dumps(REFUSED_TURN))
    wrapper = tmp_path / "codex"
    wrapper.write_text("#!/bin/sh\nexec " + " ".join(f"'{a}'" for a in script_command(str(script)))
                       + "\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("STREAMFSM_CODEX", str(wrapper))

    class Agent:
        session_cwd = str(tmp_path)
        _interrupt_requested = False

    agent = Agent()
    notices: list[engine.RetryNotice] = []

    def turn() -> dict[str, Any]:
        return run_codex_app_server_turn(agent, user_message="hi", original_user_message="hi",
                                         messages=[], effective_task_id="task",
                                         on_retry=notices.append)

    assert turn()["completed"] is False and notices == []
    assert turn()["completed"] is False
    assert len(notices) == 1 and notices[0].number == 2 and notices[0].reason
