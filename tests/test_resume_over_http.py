"""Resuming background responses over loopback HTTP with the real openai client (sync, async and
the seed's functions): a cut background stream is continued with one GET, a cut before its id is
asked again, a refused resume falls back, an interrupt sends one cancel; every trace replays."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest

import engine
from engine.compat import run_codex_stream
from engine.simulator.scenarios import scenario_from_data
from engine.simulator.server import ResponsesSimulator
from engine.simulator.background import background_response_id

from support import API_KEY, assert_replays_identically, run_over_http, within

ANSWER = "The capital of France is Paris. It has been the capital since the tenth century."
BACKGROUND = {"model": "gpt-5", "input": "What is the capital of France?", "background": True}
FIRST_ID = background_response_id(1)


def scenario(*replies: dict[str, Any]) -> Any:
    return scenario_from_data({"reply": list(replies)})


def cut_after(events: int, **more: Any) -> dict[str, Any]:
    """The answer as a background response whose first stream is cut after `events` events."""
    return {"text": ANSWER, "background_drop_after_events": events, **more}


def requests_of(run: Any) -> list[tuple[str, str]]:
    return [(r.method, r.path + (f"?{r.query}" if r.query else "")) for r in run.requests]


class StopWhenSilent:
    """An interrupt set 0.2 s after the `count`-th delta (the stream is stalled by then), so the
    turn is stopped mid-answer however slowly it started."""

    def __init__(self, count: int = 2) -> None:
        self.stop = threading.Event()
        self.count = count
        self.deltas: list[str] = []
        self.timer = threading.Timer(0.2, self.stop.set)

    def on_text_delta(self, delta: str) -> None:
        self.deltas.append(delta)
        if len(self.deltas) == self.count:
            self.timer.start()

    def callbacks(self) -> engine.Callbacks:
        return engine.Callbacks(on_text_delta=self.on_text_delta)


class Seen:
    """Callbacks that keep every delta and count first-delta calls."""

    def __init__(self) -> None:
        self.deltas: list[str] = []
        self.firsts = 0

    def callbacks(self) -> engine.Callbacks:
        def first() -> None:
            self.firsts += 1

        return engine.Callbacks(on_first_delta=first, on_text_delta=self.deltas.append)


def test_a_cut_background_stream_completes_with_one_post_and_one_get(tmp_path: Path) -> None:
    seen = Seen()
    run = run_over_http(scenario(cut_after(6)), tmp_path, request=BACKGROUND,
                        callbacks=seen.callbacks())
    assert requests_of(run) == [
        ("POST", "/v1/responses"),
        ("GET", f"/v1/responses/{FIRST_ID}?starting_after=5&stream=true"),
    ]
    assert run.attempts == [("stream", "retire", "drop"), ("resume", "terminal", "completed")]
    assert run.result.outcome == "completed"
    assert run.result.output_text == ANSWER
    assert "".join(seen.deltas) == ANSWER and seen.firsts == 1  # each delta seen once


def test_without_resume_the_same_cut_asks_again(tmp_path: Path) -> None:
    """The comparison case: `resume=False` sends the whole request again (the server would
    regenerate the answer); a plain request is never resumed."""
    replies = (cut_after(6, times=1), {"text": ANSWER})
    run = run_over_http(scenario(*replies), tmp_path, request=BACKGROUND,
                        policy=engine.TurnPolicy(resume=False))
    assert requests_of(run) == [("POST", "/v1/responses"), ("POST", "/v1/responses")]
    assert run.result.output_text == ANSWER
    plain = {k: v for k, v in BACKGROUND.items() if k != "background"}
    run = run_over_http(scenario({"text": ANSWER, "drop_after_bytes": 900, "times": 1},
                                 {"text": ANSWER}), tmp_path, request=plain)
    assert [m for m, _ in requests_of(run)] == ["POST", "POST"]


def test_a_cut_before_response_created_is_asked_again_with_a_new_post(tmp_path: Path) -> None:
    run = run_over_http(scenario(cut_after(0, times=1), cut_after(100)), tmp_path,
                        request=BACKGROUND)
    assert requests_of(run) == [("POST", "/v1/responses"), ("POST", "/v1/responses")]
    assert run.attempts == [("stream", "retire", "drop"), ("stream", "terminal", "completed")]
    assert run.result.output_text == ANSWER


def test_a_refused_resume_falls_back_to_a_new_request(tmp_path: Path) -> None:
    """The response is cancelled elsewhere while the first stream is read; the resume is
    refused (HTTP 400: a cancelled response cannot be streamed), so the turn asks again (with
    the default policy the resume spent the stream retry, so the fallback request asks) and
    delivers the rest of the new answer without repeating what was shown."""
    seen = Seen()
    holder: dict[str, ResponsesSimulator] = {}

    def cancel_elsewhere(delta: str) -> None:
        seen.deltas.append(delta)
        if len(seen.deltas) == 1:
            sim = holder["sim"]
            cancel = urllib.request.Request(
                f"{sim.base_url}/responses/{FIRST_ID}/cancel", method="POST", data=b"")
            urllib.request.urlopen(cancel, timeout=5).read()

    trace = tmp_path / "refused.jsonl"
    with ResponsesSimulator(scenario(cut_after(8, times=1), {"text": ANSWER})) as sim:
        holder["sim"] = sim
        client = openai.OpenAI(base_url=sim.base_url, api_key=API_KEY, max_retries=0)
        result = engine.run_turn(client, BACKGROUND, trace=trace,
                                 callbacks=engine.Callbacks(on_text_delta=cancel_elsewhere))
        methods = [(r.method, r.path, r.status) for r in sim.requests]
    assert methods == [
        ("POST", "/v1/responses", 200),
        ("POST", f"/v1/responses/{FIRST_ID}/cancel", 200),
        ("GET", f"/v1/responses/{FIRST_ID}", 400),
        ("POST", "/v1/responses", 200),
    ]
    assert [(a.kind, a.reason) for a in result.attempts] == [
        ("stream", "drop"), ("resume", "resume_refused:400"), ("fallback", "completed")]
    assert result.outcome == "completed" and result.output_text == ANSWER
    assert "".join(seen.deltas) == ANSWER
    assert_replays_identically(trace)


def test_an_interrupt_cancels_the_background_response_once(tmp_path: Path) -> None:
    stalled = cut_after(100, stall_s=5, stall_after=6)
    silent = StopWhenSilent()
    try:
        run = run_over_http(scenario(stalled), tmp_path, request=BACKGROUND, interrupt=silent.stop,
                            callbacks=silent.callbacks())
    finally:
        silent.timer.cancel()
    assert run.result.outcome == "interrupted"
    assert run.elapsed < within(3.0, before=5.0)  # the stall is 5 s
    assert requests_of(run) == [("POST", "/v1/responses"),
                                ("POST", f"/v1/responses/{FIRST_ID}/cancel")]
    cancels = [line for line in run.trace.read_text().splitlines() if '"cancel"' in line]
    assert len(cancels) == 1 and FIRST_ID in cancels[0]


def test_arun_turn_resumes_and_cancels_the_same_way(tmp_path: Path) -> None:
    async def turn(sim: ResponsesSimulator, trace: Path, **options: Any) -> engine.TurnResult:
        client = openai.AsyncOpenAI(base_url=sim.base_url, api_key=API_KEY, max_retries=0)
        try:
            return await engine.arun_turn(client, BACKGROUND, trace=trace, **options)
        finally:
            await client.close()

    with ResponsesSimulator(scenario(cut_after(6))) as sim:
        result = asyncio.run(turn(sim, tmp_path / "resumed.jsonl"))
        paths = [(r.method, r.path, r.query) for r in sim.requests]
    assert paths == [("POST", "/v1/responses", ""),
                     ("GET", f"/v1/responses/{FIRST_ID}", "starting_after=5&stream=true")]
    assert result.outcome == "completed" and result.output_text == ANSWER
    assert_replays_identically(tmp_path / "resumed.jsonl")

    silent = StopWhenSilent()
    with ResponsesSimulator(scenario(cut_after(100, stall_s=5, stall_after=6))) as sim:
        try:
            result = asyncio.run(turn(sim, tmp_path / "cancelled.jsonl", interrupt=silent.stop,
                                      callbacks=silent.callbacks()))
        finally:
            silent.timer.cancel()
        paths = [(r.method, r.path, r.query) for r in sim.requests]
    assert result.outcome == "interrupted"
    assert paths == [("POST", "/v1/responses", ""),
                     ("POST", f"/v1/responses/{FIRST_ID}/cancel", "")]
    assert_replays_identically(tmp_path / "cancelled.jsonl")


class Agent:
    """The few attributes the seed's functions use."""

    def __init__(self, client: openai.OpenAI) -> None:
        self.client = client
        self._interrupt_requested = False
        self.deltas: list[str] = []

    def _ensure_primary_openai_client(self, *, reason: str) -> openai.OpenAI:
        return self.client

    def _touch_activity(self, message: str) -> None:
        pass

    def _fire_stream_delta(self, text: str) -> None:
        self.deltas.append(text)


def test_the_seeds_functions_resume_a_background_request(tmp_path: Path) -> None:
    trace = tmp_path / "compat.jsonl"
    with ResponsesSimulator(scenario(cut_after(6))) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key=API_KEY, max_retries=0)
        agent = Agent(client)
        response = run_codex_stream(agent, dict(BACKGROUND), client=client, trace=trace)
        paths = [(r.method, r.path) for r in sim.requests]
    assert paths == [("POST", "/v1/responses"), ("GET", f"/v1/responses/{FIRST_ID}")]
    assert response.output_text == ANSWER
    assert "".join(agent.deltas) == ANSWER
    recorded = [json.loads(line) for line in trace.read_text().splitlines()]
    assert [a["kind"] for a in recorded[-1]["attempts"]] == ["stream", "resume"]
    assert_replays_identically(trace)


def test_an_interrupted_background_call_of_the_seeds_functions_cancels_it(tmp_path: Path) -> None:
    with ResponsesSimulator(scenario(cut_after(100, stall_s=5, stall_after=6))) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key=API_KEY, max_retries=0)
        agent = Agent(client)
        timer = threading.Timer(0.2, lambda: setattr(agent, "_interrupt_requested", True))
        deliver = agent._fire_stream_delta

        def delivered(text: str) -> None:  # the stall follows the second delta
            deliver(text)
            if len(agent.deltas) == 2:
                timer.start()

        agent._fire_stream_delta = delivered  # type: ignore[method-assign]
        try:
            with pytest.raises(InterruptedError):
                run_codex_stream(agent, dict(BACKGROUND), client=client,
                                 trace=tmp_path / "compat.jsonl")
        finally:
            timer.cancel()
        paths = [(r.method, r.path) for r in sim.requests]
    assert paths == [("POST", "/v1/responses"), ("POST", f"/v1/responses/{FIRST_ID}/cancel")]
    assert_replays_identically(tmp_path / "compat.jsonl")
