"""engine.compat: the seed runtime's own test situations, with fake SDK clients and with the real
openai client over the loopback simulator, and the same situations through `run_turn`."""

from __future__ import annotations

import os
import threading
import time
from types import SimpleNamespace
from typing import Any, Iterable

import attrs
import httpx2
import openai
import pytest
from openai._models import construct_type
from openai.types.responses import Response, ResponseStreamEvent

from engine.compat import (
    FALLBACK_POLICY,
    CodexAgent,
    NO_TERMINAL_MESSAGE,
    STREAM_POLICY,
    TRACE_DIR_ATTRIBUTE,
    CompatCall,
    ProviderStreamError,
    create_stream_fallback_call,
    run_codex_create_stream_fallback,
    run_codex_stream,
    stream_call,
)
from engine.drivers.replay import replay
from engine.simulator import shapes
from engine.simulator.shapes import (
    APPLY_PATCH_TOOL,
    SHAPES,
    assemble,
    custom_tool_call,
    shell_call,
    shell_call_output,
    completed,
    created,
    error_frame,
    function_call,
    in_progress,
    incomplete,
    output_items,
    rate_limits_frame,
    reasoning_summary,
    response_object,
    text_message,
    to_reply,
    usage_for,
)
from engine.simulator.replies import Reply, Script
from engine.simulator.server import ResponsesSimulator
from machines.output import CLIENT_CALL_TYPES
from machines.records import Stall, TransportFault, TurnPolicy, TurnResult
from engine.drivers.sync import run_turn
from engine.log.trace import read_trace
from support import within

ANSWER = "The capital of France is Paris."
SHAPES_PREAMBLE = shapes._PREAMBLE
SHAPES_ANSWER = shapes._ANSWER
MISSING_COMPLETED = "Didn't receive a `response.completed` event."
INCOMPLETE_BODY = "peer closed connection without sending complete message body (incomplete chunked read)"
KWARGS = {"model": "gpt-5-codex", "input": [{"role": "user", "content": "capital of France?"}]}

# -- a seed-shaped agent --------------------------------------------------------------------


class Agent:
    """Has exactly what `engine.compat.CodexAgent` names, and records what was done with it."""

    def __init__(self, client: Any = None) -> None:
        self._interrupt_requested = False
        self.client = client
        self.activity: list[str] = []
        self.deltas: list[str] = []
        self.reasoning: list[str] = []
        self.client_reasons: list[str] = []
        self.preflights: list[tuple[dict[str, Any], bool]] = []

    def _touch_activity(self, message: str) -> None:
        self.activity.append(message)

    def _fire_stream_delta(self, text: str) -> None:
        self.deltas.append(text)

    def _fire_reasoning_delta(self, text: str) -> None:
        self.reasoning.append(text)

    def _ensure_primary_openai_client(self, *, reason: str) -> Any:
        self.client_reasons.append(reason)
        return self.client

    def _get_transport(self) -> "Agent":
        return self

    def preflight_kwargs(self, kwargs: dict[str, Any], *, allow_stream: bool) -> dict[str, Any]:
        self.preflights.append((dict(kwargs), allow_stream))
        return kwargs

    def _client_log_context(self) -> str:
        return "provider=test base_url=http://127.0.0.1"


def test_the_agent_protocol_names_what_the_seed_uses() -> None:
    assert isinstance(Agent(), CodexAgent)
    incomplete = SimpleNamespace(_interrupt_requested=False, _touch_activity=print)
    assert not isinstance(incomplete, CodexAgent)


# -- fake SDK clients, the way the seed's tests fake them ---------------------------------------

_FROM_EVENTS = object()


class FakeStream:
    """`client.responses.stream()` / `create(stream=True)` as a test double: iterates events, then
    raises `error` if given; `get_final_response()` behaves like the SDK's unless `final` is set."""

    def __init__(
        self,
        events: Iterable[Any] = (),
        *,
        error: BaseException | None = None,
        final: Any = _FROM_EVENTS,
        block: threading.Event | None = None,
    ) -> None:
        self.events = list(events)
        self.error = error
        self.final = final
        self.block = block
        self.closed = False
        self.exited = False

    def __enter__(self) -> "FakeStream":
        return self

    def __exit__(self, *exc: Any) -> bool:
        self.exited = True
        return False

    def __iter__(self):
        for event in self.events:
            yield event
        if self.block is not None:
            self.block.wait(5)
        if self.error is not None:
            raise self.error

    def get_final_response(self) -> Any:
        if self.final is not _FROM_EVENTS:
            return self.final
        for event in self.events:
            if getattr(event, "type", None) == "response.completed":
                return event.response
        raise RuntimeError(MISSING_COMPLETED)

    def close(self) -> None:
        self.closed = True


class FakeResponses:
    def __init__(self, streams: Iterable[Any] = (), creates: Iterable[Any] = ()) -> None:
        self._streams = list(streams)
        self._creates = list(creates)
        self.stream_calls: list[dict[str, Any]] = []
        self.create_calls: list[dict[str, Any]] = []
        self.handed_out: list[Any] = []

    def _next(self, queue: list[Any]) -> Any:
        item = queue.pop(0)
        if isinstance(item, BaseException):
            raise item
        self.handed_out.append(item)
        return item

    def stream(self, **kwargs: Any) -> Any:
        self.stream_calls.append(kwargs)
        return self._next(self._streams)

    def create(self, **kwargs: Any) -> Any:
        self.create_calls.append(kwargs)
        return self._next(self._creates)


def fake_client(streams: Iterable[Any] = (), creates: Iterable[Any] = ()) -> SimpleNamespace:
    return SimpleNamespace(responses=FakeResponses(streams, creates))


def typed(events: Iterable[dict[str, Any]]) -> list[Any]:
    return [construct_type(type_=ResponseStreamEvent, value=dict(e)) for e in events]


# -- situations: one description, three ways to run it --------------------------------------------


@attrs.frozen
class Spec:
    """One attempt: the events the server sends, then how the stream ends.

    end: "stream" (the events are all), "prelude:<type>" (the SDK rejects a first frame of that
    type: `RuntimeError`; as bytes: a body that ends at once), "drop" (connection lost),
    "read_timeout", "final" (no terminal event; `get_final_response()` returns `final`)."""

    events: tuple[dict[str, Any], ...] = ()
    end: str = "stream"
    final: dict[str, Any] | None = None
    dicts: bool = False

    def fake(self) -> FakeStream:
        events = [dict(e) for e in self.events] if self.dicts else typed(self.events)
        if self.end.startswith("prelude:"):
            kind = self.end.split(":", 1)[1]
            return FakeStream(error=RuntimeError(f"Expected to have received `response.created` before `{kind}`"))
        if self.end == "drop":
            return FakeStream(events, error=httpx2.RemoteProtocolError(INCOMPLETE_BODY))
        if self.end == "read_timeout":
            return FakeStream(events, error=httpx2.ReadTimeout("The read operation timed out"))
        if self.end == "final":
            return FakeStream(events, final=construct_type(type_=Response, value=self.final))
        return FakeStream(events)

    def reply(self) -> Reply:
        if self.end.startswith("prelude:"):
            return to_reply([])
        parts: list[Any] = list(self.events)
        if self.end == "drop":
            parts.append(TransportFault("drop"))
        elif self.end == "read_timeout":
            parts.append(Stall(1.0))
        elif self.end == "final":
            parts.append({"type": "response.completed", "response": self.final})
        return to_reply(parts)


@attrs.frozen
class Situation:
    name: str
    streams: tuple[Spec, ...]
    creates: tuple[Spec, ...] = ()
    fallback_only: bool = False

    @property
    def policy(self) -> TurnPolicy:
        return FALLBACK_POLICY if self.fallback_only else STREAM_POLICY

    def fake_client(self) -> SimpleNamespace:
        return fake_client([s.fake() for s in self.streams], [s.fake() for s in self.creates])

    def script(self) -> Script:
        return Script(tuple(s.reply() for s in (*self.streams, *self.creates)))

    def call(self, client: Any, agent: Agent, trace: Any, **kwargs: Any) -> CompatCall:
        if self.fallback_only:
            return create_stream_fallback_call(agent, dict(KWARGS), client, trace=trace)
        return stream_call(agent, dict(KWARGS), client, trace=trace, **kwargs)


def happy(text: str = ANSWER) -> tuple[dict[str, Any], ...]:
    message = text_message(text, deltas=3)
    return tuple(assemble(created(), in_progress(), message, completed(output_items(message))))


def cut_short(text: str = ANSWER) -> tuple[dict[str, Any], ...]:
    """created, in_progress and the first two of three deltas: no terminal event."""
    message = text_message(text, deltas=3, finished=False)[:4]
    return tuple(assemble(created(), in_progress(), message))


def _items_then_empty_output() -> tuple[dict[str, Any], ...]:
    reasoning = reasoning_summary("Paris is the capital.", deltas=2, output_index=0)
    answer = text_message(ANSWER, deltas=3, output_index=1)
    return tuple(assemble(created(), in_progress(), reasoning, answer,
                          completed([], usage=usage_for(output_items(reasoning, answer)))))


def _text_only_then_empty_output() -> tuple[dict[str, Any], ...]:
    deltas = [e for e in text_message(ANSWER, deltas=3) if e["type"] == "response.output_text.delta"]
    return tuple(assemble(created(), deltas, completed([])))


def _tool_call_between_text() -> tuple[dict[str, Any], ...]:
    before = text_message("Let me check.", deltas=2, output_index=0)
    call = function_call("get_weather", '{"city":"Paris"}', deltas=2, output_index=1)
    after = text_message("Checking now.", deltas=2, output_index=2)
    return tuple(assemble(created(), in_progress(), before, call, after,
                          completed(output_items(before, call, after))))


def _custom_tool_call_between_text() -> tuple[dict[str, Any], ...]:
    tools = [APPLY_PATCH_TOOL]
    before = text_message("Let me patch it.", deltas=2, output_index=0)
    call = custom_tool_call("apply_patch", "*** Begin Patch\n*** End Patch\n", output_index=1)
    after = text_message("Patched.", deltas=2, output_index=2)
    return tuple(assemble(created(tools=tools), before, call, after,
                          completed(output_items(before, call, after), tools=tools)))


def _hosted_shell_then_text() -> tuple[dict[str, Any], ...]:
    call = shell_call(["ls"], output_index=0,
                      environment={"type": "container_reference", "container_id": "cntr_1"})
    output = shell_call_output("call_00_sim", [("a.txt\n", "", 0)], output_index=1)
    answer = text_message("The folder holds a.txt.", deltas=2, output_index=2)
    return tuple(assemble(created(), call, output, answer,
                          completed(output_items(call, output, answer))))


GOOD = Spec(happy("Fallback answer."))
SITUATIONS = [
    Situation("happy", (Spec(happy()),)),
    *(
        Situation(f"prelude_{kind}_falls_back", (Spec(end=f"prelude:{kind}"),) * 2, (GOOD,))
        for kind in ("error", "codex.rate_limits", "response.in_progress")
    ),
    Situation("missing_completed_then_retry_ok", (Spec(cut_short()), Spec(happy()))),
    Situation("missing_completed_falls_back", (Spec(cut_short()),) * 2, (GOOD,)),
    Situation("drops_fall_back", (Spec(cut_short(), end="drop"),) * 2, (GOOD,)),
    Situation("read_timeouts_fall_back", (Spec(cut_short(), end="read_timeout"),) * 2, (GOOD,)),
    Situation("fallback_drops_too", (Spec(cut_short(), end="drop"),) * 2, (Spec(cut_short(), end="drop"),)),
    Situation("fallback_without_terminal", (Spec(cut_short()),) * 2, (Spec(cut_short(), dicts=True),)),
    Situation("empty_output_backfilled_from_items", (Spec(_items_then_empty_output()),)),
    Situation("empty_output_backfilled_from_text", (Spec(_text_only_then_empty_output()),)),
    Situation(
        "final_response_backfilled_from_text",
        (Spec(tuple(_text_only_then_empty_output()[:-1]), end="final",
              final=response_object("completed", output=[])),),
    ),
    Situation("text_suppressed_after_tool_call", (Spec(_tool_call_between_text()),)),
    Situation("text_suppressed_after_custom_tool_call", (Spec(_custom_tool_call_between_text()),)),
    Situation("text_streams_after_hosted_shell_call", (Spec(_hosted_shell_then_text()),)),
    Situation("error_event_mid_stream", (Spec((*cut_short(), *error_frame("overloaded", "server_busy"))),)),
    Situation("incomplete_returned", (Spec(tuple(assemble(
        created(), text_message("Paris is", deltas=2, status="incomplete"),
        incomplete("max_output_tokens", output_items(text_message("Paris is", deltas=2, status="incomplete"))),
    ))),)),
    Situation("fallback_parses_created_in_progress_completed", (), (Spec(happy(), dicts=True),),
              fallback_only=True),
    Situation("fallback_parses_typed_events", (), (Spec(happy()),), fallback_only=True),
    Situation("fallback_no_terminal", (), (Spec(cut_short(), dicts=True),), fallback_only=True),
    Situation("fallback_error_event", (), (Spec(tuple(assemble(
        error_frame("You do not have an active Grok subscription.", "subscription_required",
                    param="model"))), dicts=True),), fallback_only=True),
]
BY_NAME = {s.name: s for s in SITUATIONS}


def situation(name: str) -> Situation:
    return BY_NAME[name]


def run_fake(name: str, tmp_path: Any, **kwargs: Any) -> tuple[CompatCall, Agent, FakeResponses]:
    s = situation(name)
    client = s.fake_client()
    agent = Agent()
    call = s.call(client, agent, tmp_path / f"{name}.jsonl", **kwargs)
    return call, agent, client.responses


# -- parity: the seed's own situations -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["error", "codex.rate_limits", "response.in_progress"])
def test_prelude_runtime_errors_retry_once_then_fall_back(kind: str, tmp_path: Any) -> None:
    call, agent, responses = run_fake(f"prelude_{kind}_falls_back", tmp_path)
    assert len(responses.stream_calls) == 2  # exactly one retry
    assert len(responses.create_calls) == 1
    assert call.unwrap().output_text == "Fallback answer."
    assert [(a.kind, a.reason) for a in call.result.attempts] == [
        ("stream", "eof"), ("stream", "eof"), ("fallback", "completed")]


def test_prelude_runtime_error_from_opening_falls_back_too() -> None:
    prelude = RuntimeError("Expected to have received `response.created` before `error`")
    client = fake_client([prelude, prelude], [FakeStream(typed(happy("From fallback.")))])
    response = run_codex_stream(Agent(), dict(KWARGS), client)
    assert response.output_text == "From fallback."
    assert len(client.responses.create_calls) == 1


def test_unrelated_runtime_error_propagates_after_one_request(tmp_path: Any) -> None:
    client = fake_client([FakeStream(typed(cut_short()), error=RuntimeError("boom"))],
                         [FakeStream(typed(happy()))])
    trace = tmp_path / "boom.jsonl"
    with pytest.raises(RuntimeError, match="^boom$"):
        run_codex_stream(Agent(), dict(KWARGS), client, trace=trace)
    assert len(client.responses.stream_calls) == 1 and client.responses.create_calls == []
    assert replay(trace).identical  # recorded up to the error, no result


def test_seed_fake_missing_completed_is_retried(tmp_path: Any) -> None:
    """The seed's test: no events, `get_final_response()` raising, then a final response."""
    ok = SimpleNamespace(
        output=[SimpleNamespace(type="message", content=[SimpleNamespace(type="output_text", text="stream ok")])],
        usage=SimpleNamespace(input_tokens=5, output_tokens=3, total_tokens=8),
        status="completed", model="gpt-5-codex",
    )
    client = fake_client([FakeStream(), FakeStream(final=ok)],
                         [SimpleNamespace(output=[], status="completed")])
    response = run_codex_stream(Agent(), {"model": "gpt-5-codex"}, client, trace=tmp_path / "t.jsonl")
    assert response is ok
    assert response.output[0].content[0].text == "stream ok"
    assert len(client.responses.stream_calls) == 2 and client.responses.create_calls == []
    assert replay(tmp_path / "t.jsonl").identical


def test_seed_fake_falls_back_to_a_concrete_create_response(tmp_path: Any) -> None:
    concrete = SimpleNamespace(
        output=[SimpleNamespace(type="message", content=[SimpleNamespace(type="output_text", text="create fallback ok")])],
        status="completed",
    )
    client = fake_client([FakeStream(), FakeStream()], [concrete])
    response = run_codex_stream(Agent(), {"model": "gpt-5-codex"}, client, trace=tmp_path / "t.jsonl")
    assert response is concrete  # passed through untouched
    assert len(client.responses.stream_calls) == 2 and len(client.responses.create_calls) == 1
    result = read_trace(tmp_path / "t.jsonl").records[-1]
    assert result["outcome"] == "completed" and result["output_text"] == "create fallback ok"
    assert replay(tmp_path / "t.jsonl").identical


def test_concrete_response_from_fallback_alone_is_passed_through() -> None:
    concrete = construct_type(type_=Response, value=happy()[-1]["response"])
    client = fake_client([], [concrete])
    agent = Agent(client)
    assert run_codex_create_stream_fallback(agent, dict(KWARGS)) is concrete
    assert agent.client_reasons == ["codex_create_stream_fallback"]
    sent, allow_stream = agent.preflights[0]
    assert sent == {**KWARGS, "stream": True} and allow_stream is True
    assert client.responses.create_calls == [{**KWARGS, "stream": True}]


@pytest.mark.parametrize("name", ["missing_completed_falls_back", "drops_fall_back", "read_timeouts_fall_back"])
def test_missing_terminal_and_transport_errors_retry_then_fall_back(name: str, tmp_path: Any) -> None:
    call, agent, responses = run_fake(name, tmp_path)
    assert len(responses.stream_calls) == 2 and len(responses.create_calls) == 1
    assert call.unwrap().output_text == "Fallback answer."
    assert responses.create_calls[0]["stream"] is True


@pytest.mark.parametrize("error", [httpx2.ConnectError("refused"), ConnectionError("reset"),
                                   openai.APIConnectionError(request=httpx2.Request("POST", "http://x"))])
def test_transport_errors_at_opening_retry_then_fall_back(error: Exception) -> None:
    client = fake_client([error, error], [FakeStream(typed(happy("ok")))])
    assert run_codex_stream(Agent(), dict(KWARGS), client).output_text == "ok"
    assert len(client.responses.stream_calls) == 2 and len(client.responses.create_calls) == 1


def test_missing_completed_then_retry_needs_no_fallback(tmp_path: Any) -> None:
    call, agent, responses = run_fake("missing_completed_then_retry_ok", tmp_path)
    assert len(responses.stream_calls) == 2 and responses.create_calls == []
    assert call.unwrap().output_text == ANSWER


def test_fallback_parses_created_in_progress_completed_and_closes_its_stream(tmp_path: Any) -> None:
    for name in ("fallback_parses_created_in_progress_completed", "fallback_parses_typed_events"):
        call, agent, responses = run_fake(name, tmp_path)
        response = call.unwrap()
        stream = responses.handed_out[0]
        assert stream.closed
        completed_event = stream.events[-1]
        if isinstance(completed_event, dict):
            assert response is completed_event["response"]  # a dict, as the seed returns it
            assert response["status"] == "completed"
        else:
            assert response is completed_event.response
            assert response.output_text == ANSWER
        assert "receiving stream response" in agent.activity


def test_fallback_without_terminal_raises_the_seeds_message_and_closes(tmp_path: Any) -> None:
    call, agent, responses = run_fake("fallback_no_terminal", tmp_path)
    with pytest.raises(RuntimeError) as raised:
        call.unwrap()
    assert str(raised.value) == NO_TERMINAL_MESSAGE
    assert responses.handed_out[0].closed


def test_no_terminal_anywhere_raises_the_seeds_message(tmp_path: Any) -> None:
    call, agent, responses = run_fake("fallback_without_terminal", tmp_path)
    with pytest.raises(RuntimeError, match="fallback did not emit a terminal response"):
        call.unwrap()
    assert len(responses.stream_calls) == 2 and len(responses.create_calls) == 1


def test_close_errors_are_swallowed() -> None:
    stream = FakeStream([dict(e) for e in happy()])

    def broken_close() -> None:
        raise OSError("already closed")

    stream.close = broken_close  # type: ignore[method-assign]
    client = fake_client([], [stream])
    assert run_codex_create_stream_fallback(Agent(), dict(KWARGS), client)["status"] == "completed"


def test_fallback_transport_error_is_raised_as_the_sdk_raised_it(tmp_path: Any) -> None:
    call, agent, responses = run_fake("fallback_drops_too", tmp_path)
    with pytest.raises(httpx2.RemoteProtocolError):
        call.unwrap()
    assert len(responses.stream_calls) == 2 and len(responses.create_calls) == 1


@pytest.mark.parametrize("name,expected", [
    ("empty_output_backfilled_from_items", ["reasoning", "message"]),
    ("empty_output_backfilled_from_text", ["message"]),
    ("final_response_backfilled_from_text", ["message"]),
])
def test_empty_output_is_backfilled(name: str, expected: list[str], tmp_path: Any) -> None:
    call, agent, responses = run_fake(name, tmp_path)
    response = call.unwrap()
    assert [item.type for item in response.output] == expected
    assert response.output_text == ANSWER
    if name == "final_response_backfilled_from_text":
        assert response is responses.handed_out[0].final  # the SDK's object, backfilled
        assert response.output[0].status == "completed" and response.output[0].role == "assistant"


def test_dict_terminal_response_is_backfilled_as_dicts() -> None:
    deltas = [e for e in text_message("Hi there", deltas=2) if e["type"] == "response.output_text.delta"]
    events = [dict(e) for e in assemble(created(), deltas, completed([]))]
    response = run_codex_create_stream_fallback(Agent(), dict(KWARGS), fake_client([], [FakeStream(events)]))
    assert response is events[-1]["response"]
    assert response["output"][0]["content"][0]["text"] == "Hi there"


def test_text_is_suppressed_after_a_tool_call(tmp_path: Any) -> None:
    call, agent, responses = run_fake("text_suppressed_after_tool_call", tmp_path)
    assert "".join(agent.deltas) == "Let me check."
    response = call.unwrap()
    assert response.output_text == "Let me check.Checking now."  # kept, just not streamed
    assert [c["name"] for c in call.result.tool_calls] == ["get_weather"]


def test_text_is_suppressed_after_a_custom_tool_call_too(tmp_path: Any) -> None:
    call, agent, responses = run_fake("text_suppressed_after_custom_tool_call", tmp_path)
    assert "".join(agent.deltas) == "Let me patch it."
    response = call.unwrap()
    assert response.output_text == "Let me patch it.Patched."
    assert [item.type for item in response.output] == ["message", "custom_tool_call", "message"]
    assert [(c["type"], c["name"]) for c in call.result.tool_calls] == [
        ("custom_tool_call", "apply_patch")]


def test_a_call_the_server_ran_does_not_stop_the_text(tmp_path: Any) -> None:
    call, agent, responses = run_fake("text_streams_after_hosted_shell_call", tmp_path)
    response = call.unwrap()
    assert "".join(agent.deltas) == response.output_text == "The folder holds a.txt."
    assert [item.type for item in response.output] == [
        "shell_call", "shell_call_output", "message"]
    assert call.result.tool_calls == []


def test_on_first_delta_fires_exactly_once_and_text_is_never_repeated(tmp_path: Any) -> None:
    fired: list[int] = []

    def first() -> None:
        fired.append(1)
        raise ValueError("a broken callback does not break the turn")

    call, agent, responses = run_fake("missing_completed_then_retry_ok", tmp_path, on_first_delta=first)
    assert fired == [1]
    assert "".join(agent.deltas) == ANSWER  # the seed streamed the first two deltas twice
    assert agent._codex_streamed_text_parts == agent.deltas
    assert call.unwrap().output_text == ANSWER


def test_reasoning_deltas_reach_the_reasoning_callback() -> None:
    reasoning = reasoning_summary("Think.", deltas=2, output_index=0)
    answer = text_message("Done.", deltas=1, output_index=1)
    events = typed(assemble(created(), reasoning, answer, completed(output_items(reasoning, answer))))
    agent = Agent()
    run_codex_stream(agent, dict(KWARGS), fake_client([FakeStream(events)]))
    assert "".join(agent.reasoning) == "Think." and agent.deltas == ["Done."]


def test_incomplete_is_returned_from_the_attempt_that_produced_it(tmp_path: Any, caplog: Any) -> None:
    with caplog.at_level("WARNING", logger="streamfsm"):
        call, agent, responses = run_fake("incomplete_returned", tmp_path)
    response = call.unwrap()
    assert response.status == "incomplete" and response.output_text == "Paris is"
    assert len(responses.stream_calls) == 1 and responses.create_calls == []
    assert "response.incomplete" in caplog.text and "provider=test" in caplog.text


# -- defects not kept -----------------------------------------------------------------------------


def test_error_event_raises_the_providers_words_at_once(tmp_path: Any) -> None:
    call, agent, responses = run_fake("error_event_mid_stream", tmp_path)
    with pytest.raises(ProviderStreamError) as raised:
        call.unwrap()
    assert len(responses.stream_calls) == 1 and responses.create_calls == []
    error = raised.value
    assert (error.message, error.code, error.param) == ("overloaded", "server_busy", None)
    assert error.body == {"error": {"message": "overloaded", "code": "server_busy", "param": None, "type": "error"}}


def test_fallback_error_event_is_a_typed_stream_error(tmp_path: Any) -> None:
    call, agent, responses = run_fake("fallback_error_event", tmp_path)
    with pytest.raises(ProviderStreamError) as raised:
        call.unwrap()
    assert str(raised.value) == "You do not have an active Grok subscription."
    assert raised.value.code == "subscription_required" and raised.value.param == "model"
    assert raised.value.body["error"]["message"] == "You do not have an active Grok subscription."


def test_interrupt_before_an_attempt_sends_nothing(tmp_path: Any) -> None:
    client = fake_client([FakeStream(typed(happy()))])
    agent = Agent()
    agent._interrupt_requested = True
    with pytest.raises(InterruptedError, match="before Codex stream retry"):
        run_codex_stream(agent, dict(KWARGS), client, trace=tmp_path / "t.jsonl")
    assert client.responses.stream_calls == []
    assert read_trace(tmp_path / "t.jsonl").records[-1]["outcome"] == "interrupted"
    assert replay(tmp_path / "t.jsonl").identical


class InterruptOnceSilent:
    """Sets the agent's interrupt flag `delay_s` after its `count`-th delta (when the stream has
    gone silent), and notes when: how prompt the interrupt was is measured from then, whatever
    the machine's speed before."""

    def __init__(self, agent: Agent, count: int, delay_s: float = 0.1) -> None:
        self.agent = agent
        self.count = count
        self.delay_s = delay_s
        self.set_at: float | None = None
        self.timer: threading.Timer | None = None
        deliver = agent._fire_stream_delta

        def delivered(text: str) -> None:
            deliver(text)
            if len(agent.deltas) == count and self.timer is None:
                self.timer = threading.Timer(delay_s, self._set)
                self.timer.start()

        agent._fire_stream_delta = delivered  # type: ignore[method-assign]

    def _set(self) -> None:
        self.set_at = time.monotonic()
        self.agent._interrupt_requested = True

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()

    def seconds_to(self, moment: float) -> float:
        assert self.set_at is not None, "the interrupt was never set"
        return moment - self.set_at


def test_interrupt_mid_stream_is_honoured_promptly() -> None:
    release = threading.Event()
    stream = FakeStream(typed(cut_short()), block=release)  # then silent, like a stalled socket
    client = fake_client([stream])
    agent = Agent()
    interrupt = InterruptOnceSilent(agent, count=2)
    try:
        with pytest.raises(InterruptedError, match="during Codex stream"):
            run_codex_stream(agent, dict(KWARGS), client)
        returned = time.monotonic()
    finally:
        release.set()
        interrupt.cancel()
    assert interrupt.seconds_to(returned) < within(0.5)  # the seed waited for the stream to finish
    assert stream.closed and stream.exited
    assert agent.deltas == ["The capital", " of France"]


def test_client_factory_is_used_when_no_client_is_given() -> None:
    client = fake_client([FakeStream(typed(happy()))])
    agent = Agent(client)
    assert run_codex_stream(agent, dict(KWARGS)).output_text == ANSWER
    assert agent.client_reasons == ["codex_stream_direct"]
    assert client.responses.stream_calls == [KWARGS]


def test_agent_trace_directory_records_every_call(tmp_path: Any) -> None:
    agent = Agent()
    setattr(agent, TRACE_DIR_ATTRIBUTE, str(tmp_path))
    run_codex_stream(agent, dict(KWARGS), fake_client([FakeStream(typed(happy()))]))
    run_codex_create_stream_fallback(agent, dict(KWARGS), fake_client([], [FakeStream(typed(happy()))]))
    names = sorted(os.listdir(tmp_path))
    assert len(names) == 2
    assert names[0].startswith("run_codex_create_stream_fallback-") and names[1].startswith("run_codex_stream-")
    for name in names:
        trace = read_trace(tmp_path / name)
        assert trace.header["compat"] == name.split("-")[0]
        assert replay(tmp_path / name).identical


# -- every situation: recorded, replayed, and the same through run_turn -------------------------------


def _comparable(path: Any, *, inputs: bool) -> list[dict[str, Any]]:
    out = []
    for record in read_trace(path).records:
        if record["kind"] == "input" and not inputs:
            continue
        out.append({k: v for k, v in record.items() if k not in ("seq", "t", "received_at")})
    return out


def _key(result: TurnResult) -> tuple[Any, ...]:
    return (
        result.outcome, result.output_text, result.tool_calls, result.error, result.response,
        [(a.kind, a.final_state, a.reason) for a in result.attempts],
        [(t.machine, t.attempt, t.source, t.dest, t.trigger) for t in result.transitions],
        result.rate_limits,
    )


def _client(sim: ResponsesSimulator, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.base_url, api_key="sk-test-0123456789abcdef01", max_retries=0, **options)


@pytest.mark.parametrize("s", SITUATIONS, ids=[s.name for s in SITUATIONS])
def test_situation_replays_and_matches_run_turn(s: Situation, tmp_path: Any) -> None:
    compat_trace = tmp_path / "compat.jsonl"
    call = s.call(s.fake_client(), Agent(), compat_trace)
    assert replay(compat_trace).identical

    turn_trace = tmp_path / "turn.jsonl"
    with ResponsesSimulator(s.script()) as sim:
        result = run_turn(_client(sim, timeout=0.3), dict(KWARGS), policy=s.policy, trace=turn_trace)
        requests = len(sim.requests)
    assert _key(call.result) == _key(result)
    assert _comparable(compat_trace, inputs=False) == _comparable(turn_trace, inputs=False)
    assert requests == len(result.attempts)


# -- the real openai client over loopback HTTP ----------------------------------------------------

REAL_SHAPES = [name for name in SHAPES if not name.startswith("stall")]


@pytest.mark.parametrize("name", REAL_SHAPES)
def test_real_client_compat_records_what_run_turn_records(name: str, tmp_path: Any) -> None:
    """Same bytes, same chunk boundaries, same machines: the traces agree record for record."""
    script = SHAPES[name]
    agent = Agent()
    with ResponsesSimulator(script) as sim:
        call = stream_call(agent, dict(KWARGS), _client(sim), trace=tmp_path / "compat.jsonl")
        compat_requests = len(sim.requests)
    with ResponsesSimulator(script) as sim:
        result = run_turn(_client(sim), dict(KWARGS), trace=tmp_path / "turn.jsonl")
        assert compat_requests == len(sim.requests)
    assert _comparable(tmp_path / "compat.jsonl", inputs=True) == _comparable(tmp_path / "turn.jsonl", inputs=True)
    assert replay(tmp_path / "compat.jsonl").identical
    assert call.result.outcome == result.outcome
    if result.outcome in ("completed", "incomplete", "failed"):
        assert isinstance(call.value, Response)
        assert call.value.output_text == result.output_text
        assert call.value.status == result.response["status"]
        listed = [c["call_id"] for c in result.tool_calls]
        assert [c.call_id for c in call.value.output
                if c.type in CLIENT_CALL_TYPES and c.call_id in listed] == listed
    elif result.attempts[-1].reason == "error_frame":
        assert isinstance(call.raised, ProviderStreamError)
        assert call.raised.message == result.error["message"]
    elif result.attempts[-1].reason.startswith("http_"):
        assert isinstance(call.raised, openai.APIStatusError)
        assert call.raised.status_code == result.error["status"]
    else:
        assert isinstance(call.raised, openai.APIConnectionError)  # what the SDK's stream raises
    if result.output_text and not result.tool_calls:
        # the answer streamed as such: all of the text, but commentary whose phase was known
        # while it streamed (that went to the reasoning callback)
        streamed = [r["data"] for r in read_trace(tmp_path / "turn.jsonl").records
                    if r.get("effect") == "text_delta"]
        assert "".join(agent.deltas) == "".join(streamed)
        assert "".join(agent.deltas) in (result.output_text, result.answer_text)


# -- commentary: not the streamed answer ----------------------------------------------------------


class CommentingAgent(Agent):
    """An agent with a place of its own for commentary."""

    def __init__(self) -> None:
        super().__init__()
        self.commentary: list[str] = []

    def _fire_commentary_delta(self, text: str) -> None:
        self.commentary.append(text)


class QuietAgent(Agent):
    """An agent with neither a commentary nor a reasoning callback."""

    _fire_reasoning_delta = None  # type: ignore[assignment]


@pytest.mark.parametrize("agent", [Agent(), CommentingAgent(), QuietAgent()],
                         ids=["reasoning", "commentary", "nowhere"])
def test_commentary_is_not_streamed_as_the_answer(agent: Agent, tmp_path: Any) -> None:
    firsts: list[int] = []
    with ResponsesSimulator(SHAPES["commentary_then_answer"]) as sim:
        response = run_codex_stream(agent, dict(KWARGS), _client(sim),
                                    on_first_delta=lambda: firsts.append(len(agent.deltas)),
                                    trace=tmp_path / "t.jsonl")
    preamble, answer = SHAPES_PREAMBLE, SHAPES_ANSWER
    assert "".join(agent.deltas) == answer and agent._codex_streamed_text_parts == agent.deltas
    assert firsts == [0]  # once, before the first piece of the answer
    if isinstance(agent, CommentingAgent):
        assert "".join(agent.commentary) == preamble and agent.reasoning == []
    elif isinstance(agent, QuietAgent):
        assert agent.reasoning == []
    else:
        assert "".join(agent.reasoning) == preamble
    assert response.output_text == preamble + answer  # the SDK's join, as the seed returns it
    assert [item.phase for item in response.output] == ["commentary", "final_answer"]
    assert replay(tmp_path / "t.jsonl").identical


def test_commentary_before_a_tool_call_reaches_the_reasoning_callback() -> None:
    agent = Agent()
    with ResponsesSimulator(SHAPES["commentary_then_tool_call"]) as sim:
        response = run_codex_stream(agent, dict(KWARGS), _client(sim))
    assert agent.deltas == [] and "".join(agent.reasoning) == SHAPES_PREAMBLE
    assert [item.type for item in response.output] == ["message", "function_call"]


def test_real_client_prelude_frames_cost_one_request() -> None:
    """The seed paid three requests for each of these; the bytes need one."""
    for name in ("rate_limits_before_created", "relay_in_progress_first"):
        with ResponsesSimulator(SHAPES[name]) as sim:
            response = run_codex_stream(Agent(), dict(KWARGS), _client(sim))
            assert len(sim.requests) == 1
        assert response.output_text.startswith("The capital of France is Paris.")


def test_real_client_error_first_frame_raises_the_providers_words() -> None:
    with ResponsesSimulator(SHAPES["error_first_top_level"]) as sim:
        with pytest.raises(ProviderStreamError) as raised:
            run_codex_stream(Agent(), dict(KWARGS), _client(sim))
        assert len(sim.requests) == 1
    assert "not entitled to use model grok-4" in raised.value.message
    assert raised.value.code == "permission_denied"
    assert raised.value.body["error"]["code"] == "permission_denied"


def test_real_client_http_error_propagates_as_the_sdks_exception() -> None:
    with ResponsesSimulator(SHAPES["http_429"]) as sim:
        with pytest.raises(openai.RateLimitError) as raised:
            run_codex_stream(Agent(), dict(KWARGS), _client(sim))
        assert len(sim.requests) == 1
    assert raised.value.status_code == 429


def test_real_client_interrupt_during_a_stall_is_prompt(tmp_path: Any) -> None:
    message = text_message(ANSWER, deltas=4)
    reply = to_reply(assemble(created(), message[:4], Stall(3.0), message[4:],
                              completed(output_items(message))))
    agent = Agent()
    shown = [e for e in message[:4] if "delta" in e]
    with ResponsesSimulator(Script((reply,))) as sim:
        interrupt = InterruptOnceSilent(agent, count=len(shown))
        try:
            with pytest.raises(InterruptedError):
                run_codex_stream(agent, dict(KWARGS), _client(sim), trace=tmp_path / "t.jsonl")
            returned = time.monotonic()
        finally:
            interrupt.cancel()
        assert len(sim.requests) == 1
    assert interrupt.seconds_to(returned) < 0.5
    assert "".join(agent.deltas) == "".join(e["delta"] for e in message[:4] if "delta" in e)
    assert read_trace(tmp_path / "t.jsonl").records[-1]["outcome"] == "interrupted"
    assert replay(tmp_path / "t.jsonl").identical


def test_real_client_fallback_alone_reads_the_sdk_stream_body(tmp_path: Any) -> None:
    with ResponsesSimulator(SHAPES["completed_output_null"]) as sim:
        response = run_codex_create_stream_fallback(Agent(), dict(KWARGS), _client(sim),
                                                     trace=tmp_path / "t.jsonl")
        assert sim.requests[0].body["stream"] is True
    assert isinstance(response, Response)
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert replay(tmp_path / "t.jsonl").identical


def test_real_client_secrets_stay_out_of_the_trace(tmp_path: Any) -> None:
    with ResponsesSimulator(SHAPES["happy_text"]) as sim:
        run_codex_stream(Agent(), {**KWARGS, "metadata": {"note": "sk-test-0123456789abcdef01"}},
                         _client(sim), trace=tmp_path / "t.jsonl")
    assert b"sk-test-0123456789abcdef01" not in (tmp_path / "t.jsonl").read_bytes()


def test_rate_limit_frames_are_absorbed_from_sdk_events_too() -> None:
    events = typed(assemble(rate_limits_frame(), *happy()))
    call = stream_call(Agent(), dict(KWARGS), fake_client([FakeStream(events)]), trace=None)
    assert call.unwrap().output_text == ANSWER and call.result.rate_limits
