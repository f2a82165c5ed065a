"""OpenTelemetry spans of every turn (`engine.log.otel`), read back with the SDK's in-memory
exporter.

The turns run in a fresh interpreter that configures the global tracer provider the way an
application does (it can be set once per process, so the test process itself keeps none): real
turns through the built-in simulator with the openai client, a `consume`, a replay, and codex
app-server turns against the scripted app-server. The child prints every finished span as JSON;
the tests check the span tree, the attributes, the status and the events, and that no secret,
prompt or answer reaches an attribute.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk.trace", reason="needs opentelemetry-sdk (the test extra)")

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-otel-secret-0123456789abcdef"
PROMPT = "What is the capital of France? (a prompt)"

CHILD = textwrap.dedent(
    """
    import json, sys
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    import openai, engine
    from engine.simulator.server import ResponsesSimulator
    from engine.simulator.shapes import SHAPES
    from engine.testing.fake_app_server import script_command

    SECRET, PROMPT, SCRIPTS = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    app = trace.get_tracer("the.application")

    def turn(shape, **options):
        request = {"model": "gpt-5", "input": PROMPT}
        if "background" in shape:
            request["background"] = True
        with ResponsesSimulator(SHAPES[shape]) as sim:
            client = openai.OpenAI(base_url=sim.base_url, api_key=SECRET, max_retries=0)
            with app.start_as_current_span("app." + shape):
                return engine.run_turn(client, request, **options)

    turn("drop_then_retry")
    turn("http_429", policy=engine.TurnPolicy(max_http_retries=0))
    turn("drop_every_attempt")
    turn("background_drop_then_resume")
    turn("happy_text", trace=sys.argv[4])
    before = len(exporter.get_finished_spans())
    assert engine.replay(sys.argv[4]).identical
    replayed = len(exporter.get_finished_spans()) - before
    records = [json.loads(line) for line in open(sys.argv[4], encoding="utf-8")]
    engine.consume([r["data"].encode() for r in records if r.get("input") == "chunk"])
    for name, script in SCRIPTS.items():
        with app.start_as_current_span("app." + name):
            with engine.CodexSession(command=script_command(script), cwd=sys.argv[5],
                                     request_timeout_s=5.0) as session:
                session.run_turn(PROMPT)

    spans = []
    for span in exporter.get_finished_spans():
        spans.append({
            "name": span.name,
            "id": span.context.span_id,
            "parent": span.parent.span_id if span.parent else None,
            "attributes": dict(span.attributes),
            "status": span.status.status_code.name,
            "events": [[event.name, dict(event.attributes)] for event in span.events],
            "kind": span.kind.name,
            "start": span.start_time, "end": span.end_time,
        })
    print(json.dumps({"spans": spans, "replayed": replayed}))
    """
)

THREAD, TURN = "thread-otel", "turn-otel"
HANDSHAKE: list[dict[str, Any]] = [
    {"expect": "initialize"}, {"send": {"id": "$id:initialize", "result": {}}},
    {"expect": "thread/start"}, {"send": {"id": "$id:thread/start",
                                          "result": {"thread": {"id": THREAD}}}},
    {"expect": "turn/start"}, {"send": {"id": "$id:turn/start", "result": {"turn": {"id": TURN}}}},
    {"send": {"method": "turn/started", "params": {"threadId": THREAD, "turn": {"id": TURN}}}},
]
ANSWERED = [*HANDSHAKE,
            {"send": {"method": "item/agentMessage/delta", "params": {
                "threadId": THREAD, "turnId": TURN, "itemId": "m", "delta": "Paris, the answer."}}},
            {"send": {"method": "turn/completed", "params": {"threadId": THREAD, "turn": {
                "id": TURN, "status": "completed", "items": []}}}}]
DIED = [*HANDSHAKE, {"exit": 3}]


@pytest.fixture(scope="module")
def spans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("otel")
    scripts = {}
    for name, steps in (("answered", ANSWERED), ("died", DIED)):
        path = folder / f"{name}.json"
        path.write_text(json.dumps(steps))
        scripts[name] = str(path)
    run = subprocess.run(
        [sys.executable, "-c", CHILD, SECRET, PROMPT, json.dumps(scripts),
         str(folder / "happy.jsonl"), str(folder)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    data: dict[str, Any] = json.loads(run.stdout)
    return data


def _named(spans: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [span for span in spans["spans"] if span["name"] == name]


def _turn_under(spans: dict[str, Any], parent_name: str) -> dict[str, Any]:
    (parent,) = _named(spans, parent_name)
    (turn,) = [s for s in spans["spans"] if s["parent"] == parent["id"]]
    return turn


def _children(spans: dict[str, Any], turn: dict[str, Any]) -> list[dict[str, Any]]:
    found = [s for s in spans["spans"] if s["parent"] == turn["id"]]
    return sorted(found, key=lambda s: s["attributes"]["streamfsm.attempt.number"])


def test_a_retried_turn_is_a_turn_span_with_one_child_per_attempt(spans: dict[str, Any]) -> None:
    turn = _turn_under(spans, "app.drop_then_retry")  # a child of the caller's current span
    assert turn["name"] == "streamfsm.turn" and turn["status"] == "OK"
    attributes = turn["attributes"]
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == "gpt-5"
    assert attributes["gen_ai.response.id"].startswith("resp_")
    assert attributes["gen_ai.usage.input_tokens"] > 0
    assert attributes["gen_ai.usage.output_tokens"] > 0
    assert attributes["streamfsm.outcome"] == "completed" and "error.type" not in attributes
    first, second = _children(spans, turn)
    assert first["name"] == second["name"] == "streamfsm.attempt"
    assert first["kind"] == "CLIENT"
    assert {k: v for k, v in first["attributes"].items() if k.startswith("streamfsm.")} == {
        "streamfsm.attempt.number": 1, "streamfsm.attempt.kind": "stream",
        "streamfsm.attempt.final_state": "retire", "streamfsm.attempt.reason": "drop"}
    assert first["status"] == "ERROR" and first["attributes"]["error.type"] == "drop"
    assert second["status"] == "OK" and second["attributes"]["streamfsm.attempt.reason"] == "completed"
    assert first["end"] <= second["start"] and turn["start"] <= first["start"]
    assert second["end"] <= turn["end"]


def test_each_state_change_is_an_event_named_by_its_trigger(spans: dict[str, Any]) -> None:
    turn = _turn_under(spans, "app.drop_then_retry")
    first, second = _children(spans, turn)
    assert first["events"] == [
        ["created", {"streamfsm.machine": "stream_attempt", "streamfsm.source": "awaiting_created",
                     "streamfsm.dest": "streaming"}],
        ["drop", {"streamfsm.machine": "stream_attempt", "streamfsm.source": "streaming",
                  "streamfsm.dest": "retire"}],
    ]
    assert [name for name, _ in second["events"]] == ["created", "completed"]
    assert [name for name, _ in turn["events"]] == ["begin", "retry", "finish"]


def test_an_http_error_names_its_status_and_fails_the_turn(spans: dict[str, Any]) -> None:
    turn = _turn_under(spans, "app.http_429")
    (attempt,) = _children(spans, turn)
    assert attempt["attributes"]["http.response.status_code"] == 429
    assert attempt["status"] == "ERROR" and attempt["attributes"]["error.type"] == "http_429"
    assert turn["status"] == "ERROR"
    assert turn["attributes"]["streamfsm.outcome"] == "error"
    assert turn["attributes"]["error.type"] == "rate_limit_exceeded"  # the provider's code


def test_a_fallback_and_a_resume_are_attempts_of_their_kind(spans: dict[str, Any]) -> None:
    dropped = _turn_under(spans, "app.drop_every_attempt")
    assert [a["attributes"]["streamfsm.attempt.kind"] for a in _children(spans, dropped)] == [
        "stream", "stream", "fallback"]
    assert dropped["status"] == "ERROR" and dropped["attributes"]["error.type"] == "drop"
    resumed = _turn_under(spans, "app.background_drop_then_resume")
    assert [a["attributes"]["streamfsm.attempt.kind"] for a in _children(spans, resumed)] == [
        "stream", "resume"]
    assert resumed["status"] == "OK"


def test_a_replay_is_no_turn_and_makes_no_span(spans: dict[str, Any]) -> None:
    assert spans["replayed"] == 0


def test_consume_is_a_turn_too(spans: dict[str, Any]) -> None:
    (consumed,) = [s for s in _named(spans, "streamfsm.turn")
                   if s["attributes"]["streamfsm.entry"] == "consume"]
    assert consumed["attributes"]["streamfsm.outcome"] == "completed"
    assert len(_children(spans, consumed)) == 1


def test_an_app_server_turn_is_one_span_with_its_state_changes(spans: dict[str, Any]) -> None:
    answered = _turn_under(spans, "app.answered")
    assert answered["name"] == "streamfsm.app_turn" and answered["status"] == "OK"
    assert answered["attributes"]["streamfsm.outcome"] == "completed"
    assert answered["attributes"]["gen_ai.conversation.id"] == THREAD
    names = [name for name, _ in answered["events"]]
    assert {"begin", "started", "completed"} <= set(names)
    died = _turn_under(spans, "app.died")
    assert died["status"] == "ERROR" and died["attributes"]["streamfsm.outcome"] == "error"
    assert died["attributes"]["streamfsm.retired"] is True
    assert ["process_exit", {"streamfsm.exit_code": 3}] in died["events"]


def test_no_secret_prompt_or_answer_is_an_attribute(spans: dict[str, Any]) -> None:
    values: list[str] = []
    for span in spans["spans"]:
        values += [str(v) for v in span["attributes"].values()]
        values += [str(v) for _, attributes in span["events"] for v in attributes.values()]
    text = "\n".join(values)
    assert SECRET[:8] not in text
    assert "capital" not in text and "France" not in text  # the prompt
    assert "Paris" not in text  # the answers


def test_without_a_tracer_provider_a_turn_has_no_observer_and_no_import() -> None:
    code = textwrap.dedent(
        """
        import sys
        import engine
        assert "opentelemetry" not in sys.modules, "import engine imported opentelemetry"
        from engine.log.otel import spans_for
        assert spans_for({"entry": "run_turn", "request": {"model": "m"}}) is None
        assert "opentelemetry.trace" in sys.modules  # looked for once, at the first turn
        """
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


def test_without_opentelemetry_installed_turns_run_as_before() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if not installed: importing it fails
        import engine
        from engine.simulator.shapes import SHAPES
        from engine.log.otel import spans_for
        assert spans_for({"entry": "run_turn"}) is None
        result = engine.consume(b"event: response.created\\ndata: {}\\n\\n")
        assert result.outcome == "error"
        """
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
