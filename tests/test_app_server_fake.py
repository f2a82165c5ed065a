"""CodexSession against a scripted fake app-server, for what the real one never does on demand.

The real binary is the reference (tests/test_app_server_real.py); the fake
(engine/testing/fake_app_server.py) plays: a request left unanswered, a refused handshake or
turn, server requests the real one had no reason to send (permissions, MCP elicitation, user
input, legacy approvals, unknown methods), lines that are not JSON, `turn/completed` lines for
another turn or thread or without a status, a process that closes its output and exits 0,
ignores `turn/interrupt`, dies between turns, or echoes a secret. Every turn's
trace must replay identically.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.testing.fake_app_server import script_command
from app_support import assert_replays_identically, process_gone
from support import wait_for, within

THREAD = "thread-fake"
TURN = "turn-fake"
SECRET = "sk-fake-secret-0123456789abcdef"

HANDSHAKE: list[dict[str, Any]] = [
    {"expect": "initialize"},
    {"send": {"id": "$id:initialize", "result": {"userAgent": "fake/0"}}},
    {"expect": "thread/start"},
    {"send": {"id": "$id:thread/start", "result": {"thread": {"id": THREAD}}}},
]
TURN_START: list[dict[str, Any]] = [
    {"expect": "turn/start"},
    {"send": {"id": "$id:turn/start", "result": {"turn": {"id": TURN, "status": "inProgress"}}}},
    {"send": {"method": "turn/started", "params": {"threadId": THREAD, "turn": {"id": TURN}}}},
]


def note(method: str, **params: Any) -> dict[str, Any]:
    return {"send": {"method": method, "params": {"threadId": THREAD, "turnId": TURN, **params}}}


def answer(text: str, item: str = "msg_1") -> list[dict[str, Any]]:
    return [
        note("item/started", item={"type": "agentMessage", "id": item, "text": ""}),
        note("item/agentMessage/delta", itemId=item, delta=text),
        note("item/completed", item={"type": "agentMessage", "id": item, "text": text}),
    ]


def completed(status: str = "completed", error: Any = None, items: Any = None) -> dict[str, Any]:
    return {"send": {"method": "turn/completed", "params": {"threadId": THREAD, "turn": {
        "id": TURN, "status": status, "error": error, "items": items or []}}}}


class Fake:
    """A session running the fake with `steps`, logging what the client wrote."""

    def __init__(self, tmp_path: Path, steps: list[dict[str, Any]], **options: Any) -> None:
        script = tmp_path / f"script-{time.monotonic_ns()}.json"
        script.write_text(json.dumps(steps))
        self.log = tmp_path / f"client-{time.monotonic_ns()}.jsonl"
        self.tmp = tmp_path
        options.setdefault("request_timeout_s", 5.0)
        self.session = engine.CodexSession(command=script_command(str(script), str(self.log)),
                                           cwd=tmp_path, **options)
        self.turns = 0

    def turn(self, text: str = "hi", *, fixture: str | None = None,
             **options: Any) -> tuple[engine.AppTurnResult, Path]:
        self.turns += 1
        trace = self.tmp / f"fake-turn-{self.turns}-{time.monotonic_ns()}.jsonl"
        result = self.session.run_turn(text, trace=trace, **options)
        assert_replays_identically(trace)
        target = os.environ.get("STREAMFSM_RECORD_APP_FIXTURES")
        if fixture and target:
            shutil.copyfile(trace, Path(target) / f"fake_{fixture}.jsonl")
        return result, trace

    def client_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def replies(self, ident: int) -> list[dict[str, Any]]:
        return [m for m in self.client_lines()
                if m.get("id") == ident and "method" not in m]

    def __enter__(self) -> Fake:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.session.close()


def test_an_unanswered_request_times_out_and_retires(tmp_path: Path) -> None:
    with Fake(tmp_path, [{"expect": "initialize"}], request_timeout_s=0.4) as fake:
        began = time.monotonic()
        result, _ = fake.turn(fixture="request_timeout")
        assert time.monotonic() - began < within(3.0)
        assert fake.session.pid is None
    assert result.outcome == "error" and result.retired
    assert result.error is not None and result.error["code"] == "request_timeout"
    assert "did not answer initialize within 0.4 s" in result.error["message"]


@pytest.mark.parametrize("steps, words", [
    ([{"expect": "initialize"},
      {"send": {"id": "$id:initialize", "error": {"code": -32600, "message": "Not initialized"}}}],
     "refused initialize: Not initialized"),
    ([*HANDSHAKE[:2], {"expect": "thread/start"},
      {"send": {"id": "$id:thread/start", "result": {"thread": {}}}}],
     "refused thread/start: no thread id"),
], ids=["initialize_refused", "thread_without_id"])
def test_a_protocol_breach_in_the_handshake_retires(
    tmp_path: Path, steps: list[dict[str, Any]], words: str
) -> None:
    with Fake(tmp_path, steps) as fake:
        result, _ = fake.turn(fixture=f"protocol_breach_{len(steps)}")
    assert result.outcome == "error" and result.retired
    assert result.error is not None and result.error["code"] == "protocol_breach"
    assert words in result.error["message"]


def test_a_refused_turn_start_retires(tmp_path: Path) -> None:
    steps = [*HANDSHAKE, {"expect": "turn/start"},
             {"send": {"id": "$id:turn/start", "error": {"code": -32600, "message": "bad thread"}}}]
    with Fake(tmp_path, steps) as fake:
        result, _ = fake.turn()
    assert result.outcome == "error" and result.retired
    assert result.error is not None and "refused turn/start: bad thread" in result.error["message"]


def test_requests_are_answered_in_their_own_shape_and_unknown_ones_with_an_error(
    tmp_path: Path,
) -> None:
    def ask(ident: int, method: str, **params: Any) -> dict[str, Any]:
        return {"send": {"id": ident, "method": method,
                         "params": {"threadId": THREAD, "turnId": TURN, "itemId": f"i{ident}",
                                    **params}}}

    steps = [
        *HANDSHAKE, *TURN_START,
        ask(0, "item/permissions/requestApproval", permissions={"network": {"enabled": True}},
            cwd="/w"),
        {"expect": "response"},
        ask(1, "mcpServer/elicitation/request", serverName="s", message="ok?"),
        {"expect": "response"},
        ask(2, "item/tool/requestUserInput", questions=[], isBlocking=True),
        {"expect": "response"},
        ask(3, "execCommandApproval", command=["rm", "-rf", "build"], cwd="/w",
            conversationId=THREAD, callId="c3"),
        {"expect": "response"},
        ask(4, "item/tool/call", tool="x", arguments={}),
        {"expect": "response"},
        ask(5, "attestation/generate"),
        {"expect": "response"},
        *answer("done"),
        completed(),
    ]
    decisions = {"item/permissions/requestApproval": "acceptForSession",
                 "mcpServer/elicitation/request": "decline",
                 "item/tool/requestUserInput": "accept",
                 "execCommandApproval": "accept"}
    asked: list[engine.ApprovalRequest] = []

    def approvals(request: engine.ApprovalRequest) -> str:
        asked.append(request)
        return decisions[request.kind]

    with Fake(tmp_path, steps, approvals=approvals) as fake:
        result, _ = fake.turn(fixture="requests_in_their_shapes")
        replies = {ident: fake.replies(ident) for ident in range(6)}
    assert result.outcome == "completed" and result.output_text == "done"
    assert [r.kind for r in asked] == list(decisions)
    assert asked[3].command == "rm -rf build"
    assert replies[0] == [{"jsonrpc": "2.0", "id": 0, "result": {
        "permissions": {"network": {"enabled": True}}, "scope": "session"}}]
    assert replies[1] == [{"jsonrpc": "2.0", "id": 1,
                           "result": {"action": "decline", "content": None}}]
    assert replies[2] == [{"jsonrpc": "2.0", "id": 2, "result": {"answers": {}}}]
    assert replies[3] == [{"jsonrpc": "2.0", "id": 3, "result": {"decision": "approved"}}]
    for ident, method in ((4, "item/tool/call"), (5, "attestation/generate")):
        assert replies[ident] == [{"jsonrpc": "2.0", "id": ident, "error": {
            "code": -32601, "message": f"streamfsm does not handle {method}"}}]


def test_a_permission_request_without_callback_grants_nothing(tmp_path: Path) -> None:
    steps = [*HANDSHAKE, *TURN_START,
             {"send": {"id": 0, "method": "item/permissions/requestApproval", "params": {
                 "threadId": THREAD, "turnId": TURN, "itemId": "p",
                 "permissions": {"network": {"enabled": True}}}}},
             {"expect": "response"}, completed()]
    with Fake(tmp_path, steps) as fake:
        result, _ = fake.turn()
        assert fake.replies(0) == [{"jsonrpc": "2.0", "id": 0,
                                    "result": {"permissions": {}, "scope": "turn"}}]
    assert result.outcome == "completed"


def test_lines_that_are_not_json_rpc_are_tolerated(tmp_path: Path) -> None:
    steps = [*HANDSHAKE, *TURN_START, {"raw": "not json at all"}, {"raw": "[1,2,3]"},
             {"raw": '{"jsonrpc":"2.0","method":"turn/plan/updated","params":{}}'},
             {"raw": ""}, *answer("fine"), completed()]
    with Fake(tmp_path, steps) as fake:
        result, trace = fake.turn(fixture="lines_not_json_rpc")
    assert result.outcome == "completed" and result.output_text == "fine"
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    assert {"not json at all", "[1,2,3]"} <= {r.get("data") for r in lines if r.get("input")}


def test_closing_its_output_and_exiting_0_is_a_death(tmp_path: Path) -> None:
    steps = [*HANDSHAKE, *TURN_START, *answer("partial")[:2], {"stderr": "fatal: gave up"},
             {"close_stdout": True}, {"exit": 0}]
    with Fake(tmp_path, steps) as fake:
        result, _ = fake.turn()
        assert fake.session.pid is None
    assert result.outcome == "error" and result.retired and result.output_text == "partial"
    assert result.error is not None and "fatal: gave up" in result.error["message"]


def test_no_turn_completed_after_an_interrupt_retires(tmp_path: Path) -> None:
    steps = [*HANDSHAKE, *TURN_START, *answer("working")[:2], {"expect": "turn/interrupt"},
             {"send": {"id": "$id:turn/interrupt", "result": {}}}]
    stop = threading.Event()
    with Fake(tmp_path, steps, interrupt_grace_s=0.3) as fake:
        timer = threading.Timer(0.2, stop.set)
        timer.start()
        result, _ = fake.turn(interrupt=stop, fixture="interrupt_unanswered")
        timer.cancel()
        assert fake.session.pid is None
    assert result.outcome == "interrupted" and result.retired
    assert result.output_text == "working"


def test_a_death_between_turns_starts_a_new_process_for_the_next(tmp_path: Path) -> None:
    steps = [*HANDSHAKE, *TURN_START, *answer("one"), completed(),
             {"send": {"method": "account/rateLimits/updated", "params": {}}},
             {"sleep": 0.1}, {"exit": 0}]
    with Fake(tmp_path, steps) as fake:
        first, _ = fake.turn()
        pid = fake.session.pid
        assert wait_for(lambda: process_gone(pid), within(5.0)) is not None  # exits between turns
        second, trace = fake.turn()
        assert fake.session.pid not in (None, pid)
    assert first.outcome == second.outcome == "completed"
    assert json.loads(trace.read_text().splitlines()[0])["session"]["state"] == "spawned"


def test_lines_between_turns_open_the_next_trace(tmp_path: Path) -> None:
    steps = [*HANDSHAKE, *TURN_START, *answer("one"), completed(),
             {"send": {"method": "account/rateLimits/updated", "params": {}}},
             *TURN_START, *answer("two"), completed()]
    with Fake(tmp_path, steps) as fake:
        fake.turn()
        time.sleep(0.2)
        second, trace = fake.turn()
    assert second.outcome == "completed" and second.output_text == "two"
    first_input = json.loads(trace.read_text().splitlines()[1])
    assert first_input["input"] == "line" and "rateLimits" in first_input["data"]


def test_secrets_echoed_by_the_server_are_scrubbed(tmp_path: Path, caplog: Any) -> None:
    error = {"message": f"bad key {SECRET}", "codexErrorInfo": "other"}
    steps = [*HANDSHAKE, *TURN_START, {"stderr": "key was $env:MY_PROVIDER_API_KEY"}, {"sleep": 0.2},
             completed("failed", error=error)]
    caplog.set_level("DEBUG", logger="streamfsm")
    with Fake(tmp_path, steps, env={"MY_PROVIDER_API_KEY": SECRET}) as fake:
        result, trace = fake.turn()
    assert result.outcome == "failed"
    assert result.error is not None and result.error["message"] == "bad key [redacted]"
    assert SECRET not in trace.read_text() and SECRET not in caplog.text
    assert "key was [redacted]" in trace.read_text()


def test_a_binary_that_cannot_start_is_an_error_outcome(tmp_path: Path) -> None:
    session = engine.CodexSession(command=[str(tmp_path / "no-such-codex"), "app-server"])
    trace = tmp_path / "spawn.jsonl"
    result = session.run_turn("hi", trace=trace)
    assert result.outcome == "error" and result.retired and session.pid is None
    assert result.error is not None and result.error["code"] == "spawn_failed"
    assert_replays_identically(trace)


@pytest.mark.parametrize("call, error", [
    (lambda s: s.run_turn(3), TypeError),
    (lambda s: s.run_turn("hi", callbacks=print), TypeError),
    (lambda s: s.run_turn("hi", interrupt=3), TypeError),
    (lambda s: s.run_turn("hi", trace="/no/such/dir/t.jsonl"), ValueError),
])
def test_a_wrong_call_raises(call: Any, error: type[Exception]) -> None:
    session = engine.CodexSession(command=["true"])
    with pytest.raises(error):
        call(session)


@pytest.mark.parametrize("options, error", [
    ({"command": "codex app-server"}, TypeError),
    ({"command": []}, ValueError),
    ({"config": {"x": None}}, TypeError),
    ({"request_timeout_s": 0}, ValueError),
    ({"idle_timeout_s": -1}, ValueError),
    ({"approvals": "accept"}, TypeError),
    ({"env": {"A": 1}}, TypeError),
])
def test_wrong_session_options_raise(options: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        engine.CodexSession(**options)


def test_a_launcher_without_its_native_binary_runs_in_its_own_group_and_close_ends_it(
    tmp_path: Path,
) -> None:
    from app_support import group_members, process_gone

    steps = [*HANDSHAKE, *TURN_START, *answer("from the launcher"), completed()]
    script = tmp_path / "steps.json"
    script.write_text(json.dumps(steps))
    launcher = tmp_path / "node_modules" / "@openai" / "codex" / "bin" / "codex.js"
    launcher.parent.mkdir(parents=True)
    # like npm's Node launcher: the real server is a child, and something else lingers
    launcher.write_text("#!/bin/sh\nsleep 300 &\n" + " ".join(script_command(str(script)))
                        + "\nwait\n")
    launcher.chmod(0o755)
    session = engine.CodexSession(command=[str(launcher), "app-server"], cwd=tmp_path)
    result = session.run_turn("hi")
    pid = session.pid
    assert result.outcome == "completed" and result.output_text == "from the launcher"
    assert pid is not None and len(group_members(pid)) >= 3  # sh, sleep, the server
    session.close()
    assert process_gone(pid) and group_members(pid) == []


def test_turn_completed_lines_for_others_or_without_a_status_never_end_the_turn(
    tmp_path: Path,
) -> None:
    # what the real server never sends on demand: a malformed end (no status), an end for
    # another turn, and one for another thread carrying this turn's id
    steps = [*HANDSHAKE, *TURN_START,
             note("item/started", item={"type": "agentMessage", "id": "msg_1", "text": ""}),
             note("item/agentMessage/delta", itemId="msg_1", delta="Paris"),
             {"send": {"method": "turn/completed", "params": {"threadId": THREAD,
                                                              "turn": {"id": TURN}}}},
             {"send": {"method": "turn/completed", "params": {"threadId": THREAD, "turn": {
                 "id": "turn-other", "status": "failed", "error": {"message": "not ours"}}}}},
             {"send": {"method": "turn/completed", "params": {"threadId": "thread-other", "turn": {
                 "id": TURN, "status": "interrupted"}}}},
             note("item/agentMessage/delta", itemId="msg_1", delta=" is the capital."),
             note("item/completed", item={"type": "agentMessage", "id": "msg_1",
                                          "text": "Paris is the capital."}),
             completed(items=[{"type": "agentMessage", "id": "msg_1",
                               "text": "Paris is the capital."}])]
    with Fake(tmp_path, steps) as fake:
        result, _ = fake.turn(fixture="turn_completed_not_ours")
    assert result.outcome == "completed" and result.error is None
    assert result.output_text == "Paris is the capital."
    assert [(t.source, t.dest, t.trigger) for t in result.transitions
            if t.machine == "app_turn"] == [("queued", "awaiting_created", "sent"),
                                            ("awaiting_created", "streaming", "started"),
                                            ("streaming", "terminal", "completed")]
