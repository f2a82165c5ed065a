"""Scenarios: reading and checking files, choosing replies, reshaping them on the wire, the
request log, traces served with their timing. Over real loopback sockets, read back with a raw
socket where the chunk framing, the byte count or the kind of close matter."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import attrs
import openai
import orjson
import pytest

from engine.simulator.scenarios import (
    Rule,
    Scenario,
    ScenarioError,
    load_fixture,
    load_scenario,
    rate_limit_body,
    reshape,
    scenario_from_data,
    text_reply,
)
from engine.simulator.replies import frame_ends
from engine.simulator.shapes import SHAPES, STALL_SECONDS
from engine.simulator.scenarios import TRACE_STALL_S, script_from_trace
from engine.simulator.replies import Reply, Script
from engine.simulator.server import ResponsesSimulator
from engine.log.trace import read_trace
from machines.records import Chunk, Stall, TransportFault
from support import within

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "scenarios"
FIXTURES = ROOT / "replay_fixtures"


# -- a raw HTTP client that keeps what the SDK hides ---------------------------------------------
@attrs.frozen
class RawReply:
    status: int
    headers: dict[str, str]
    chunks: list[bytes]  # chunk payloads, as framed by the server
    terminated: bool  # the zero-length chunk arrived
    error: str | None  # "reset" when the connection was reset
    elapsed: float
    arrivals: list[float]  # seconds after the request when each chunk was complete

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def json(self) -> Any:
        return orjson.loads(self.body)


def raw_post(
    port: int, body: Any = None, headers: dict[str, str] | None = None, timeout: float = 10.0
) -> RawReply:
    """POST /v1/responses over a fresh connection and read until the reply ends or breaks. The
    request asks for a stream (``"stream": true``) unless ``body`` says otherwise."""
    if body is None:
        body = {"model": "m", "input": "hi"}
    if isinstance(body, dict):
        body = {"stream": True, **body}
    payload = orjson.dumps(body)
    head = [
        "POST /v1/responses HTTP/1.1",
        "host: 127.0.0.1",
        "content-type: application/json",
        f"content-length: {len(payload)}",
        "connection: close",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    started = time.monotonic()
    sock.sendall("\r\n".join(head).encode() + b"\r\n\r\n" + payload)
    data = b""
    error = None
    arrivals: list[tuple[int, float]] = []
    try:
        while True:
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
            arrivals.append((len(data), time.monotonic() - started))
    except ConnectionResetError:
        error = "reset"
    finally:
        sock.close()
    elapsed = time.monotonic() - started
    header_block, _, rest = data.partition(b"\r\n\r\n")
    lines = header_block.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers_out = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers_out[name.strip().lower()] = value.strip()
    offset_of_body = len(header_block) + 4
    if "content-length" in headers_out:
        return RawReply(status, headers_out, [rest], True, error, elapsed, [elapsed])
    chunks: list[bytes] = []
    chunk_times: list[float] = []
    terminated = False
    position = 0
    while position < len(rest):
        line_end = rest.find(b"\r\n", position)
        if line_end < 0:
            break
        size = int(rest[position:line_end], 16)
        if size == 0:
            terminated = True
            break
        start = line_end + 2
        chunk = rest[start : start + size]
        chunks.append(chunk)
        end = offset_of_body + start + len(chunk)
        chunk_times.append(next((t for n, t in arrivals if n >= end), elapsed))
        if len(chunk) < size:
            break
        position = start + size + 2
    return RawReply(status, headers_out, chunks, terminated, error, elapsed, chunk_times)


def serve(data: dict[str, Any], **options: Any) -> ResponsesSimulator:
    return ResponsesSimulator(scenario_from_data(data), **options)


def sse_types(body: bytes) -> list[str]:
    return [
        orjson.loads(line[6:])["type"]
        for line in body.split(b"\n")
        if line.startswith(b"data: {")
    ]


# -- files: the examples load, every mistake is one line -------------------------------------------
def test_every_example_loads() -> None:
    names = sorted(path.name for path in EXAMPLES.iterdir())
    assert names == [
        "background_resume.toml",
        "drop_then_text.toml",
        "error_frame_then_text.json",
        "incomplete.toml",
        "rate_limit_then_text.toml",
        "stall_then_text.toml",
        "text.toml",
        "tool_call_then_answer.toml",
    ]
    for path in EXAMPLES.iterdir():
        scenario = load_scenario(path)
        assert scenario.rules and scenario.description
        assert scenario.name == path.stem


def test_mistakes_are_reported_one_line_each(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(
        'colour = "red"\n'
        "[[reply]]\n"
        "stal_s = 3\n"
        'text = "hi"\n'
        "[[reply]]\n"
        'nth = "1"\n'
        'text = "hi"\n'
        "[[reply]]\n"
        'shape = "happy"\n'
        "[[reply]]\n"
        'text = "a"\n'
        'events = []\n'
        'drop = "reset"\n'
        "[[reply]]\n"
        "tool_call = { name = 'f', arguments = { a = 1 }, id = 'x' }\n"
        "[[reply]]\n"
        "background_drop_after_events = -3\n"
        'text = "hi"\n'
        "[[reply]]\n"
        "when = 'always'\n"
        "status = 700\n"
    )
    with pytest.raises(ScenarioError) as raised:
        load_scenario(path)
    assert list(raised.value.problems) == [
        f"{path}: unknown key 'colour' (known: reply, description, repeat)",
        f"{path}: reply[0]: unknown key 'stal_s' (did you mean 'stall_s'?)",
        f"{path}: reply[1]: nth must be a whole number >= 1, not a string ('1')",
        f"{path}: reply[2]: unknown shape 'happy' (did you mean 'happy_text'?)",
        f"{path}: reply[3]: drop must be \"fin\" or \"rst\", not a string ('reset')",
        f"{path}: reply[3]: text and events exclude each other: give one",
        f"{path}: reply[4]: tool_call: unknown key 'id' (known: name, arguments, call_id)",
        f"{path}: reply[4]: tool_call.arguments must be a JSON string, not a table",
        f"{path}: reply[5]: background_drop_after_events must be a whole number of events >= 0, "
        "not an integer (-3)",
        f"{path}: reply[6]: when must be the string \"tool_output\", not a string ('always')",
        f"{path}: reply[6]: status must be an HTTP status from 100 to 599, not an integer (700)",
    ]
    assert str(raised.value).count("\n") == len(raised.value.problems) - 1


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[[reply]]\nstatus = 200\n", "says nothing to send"),
        ("[[reply]]\ntext = 'a'\nstall_after = 2\n", "stall_after needs stall_s"),
        ("[[reply]]\ntext = 'a'\nbody = { a = 1 }\n", "body and text exclude each other"),
        ("[[reply]]\nstatus = 429\nchunk_delay_ms = 5\n", "apply to streamed replies only"),
        ("[[reply]]\nstall_s = -1\ntext = 'a'\n", "stall_s must be a number of seconds >= 0"),
        ("[[reply]]\ntimes = 0\ntext = 'a'\n", "times must be a whole number >= 1"),
        ("[[reply]]\nheaders = { retry-after = 1 }\nstatus = 429\n", "headers must be a table of strings"),
        ("[[reply]]\nevents = [1, 2]\n", "events must be an array of tables"),
        (
            "[[reply]]\ntext = 'a'\nbackground_drop_after_events = true\n",
            "background_drop_after_events must be a whole number of events >= 0, not a boolean",
        ),
        (
            "[[reply]]\ntext = 'a'\nbackground_drop_after_events = 2\ndrop_after_bytes = 9\n",
            "drop_after_bytes and background_drop_after_events exclude each other",
        ),
        (
            "[[reply]]\nbody = { a = 1 }\nbackground_drop_after_events = 2\n",
            "background_drop_after_events needs a streamed reply with status 200",
        ),
        (
            "[[reply]]\nstatus = 429\nbackground_drop_after_events = 2\n",
            "background_drop_after_events needs a streamed reply with status 200",
        ),
        (
            "background_drop_after_events = 2\n[[reply]]\ntext = 'a'\n",
            "'background_drop_after_events' belongs in a reply table",
        ),
        ("description = 'nothing'\n", "no reply: add at least one [[reply]] table"),
        ("reply = []\n", "reply is empty"),
        ("reply = 'text'\n", "reply must be an array of tables"),
        ("[[reply]\n", "not valid TOML"),
    ],
)
def test_each_kind_of_mistake_names_itself(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(content)
    with pytest.raises(ScenarioError) as raised:
        load_scenario(path)
    assert len(raised.value.problems) == 1
    assert problem in raised.value.problems[0]
    assert raised.value.problems[0].startswith(str(path))


def test_json_files_and_their_mistakes(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"reply": [{"text": "hi", "nth": True}]}))
    with pytest.raises(ScenarioError, match=r"reply\[0\]: nth must be a whole number >= 1, not a boolean"):
        load_scenario(path)
    path.write_text("{not json")
    with pytest.raises(ScenarioError, match="not valid JSON"):
        load_scenario(path)
    path.write_text(json.dumps({"reply": [{"text": "hi"}], "repeat": True}))
    assert load_scenario(path).repeat


def test_fixtures_resolve_to_shapes_scenarios_and_traces(tmp_path: Path) -> None:
    assert load_fixture("happy_text").repeat
    assert load_fixture(str(EXAMPLES / "text.toml")).name == "text"
    trace = load_fixture(str(FIXTURES / "drop_then_retry.jsonl"))
    assert trace.repeat and trace.reply_count == 2
    with pytest.raises(ScenarioError, match="not a built-in shape"):
        load_fixture("no_such_thing")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{}\n")
    with pytest.raises(ScenarioError, match="invalid trace"):
        load_fixture(str(bad))


# -- choosing replies --------------------------------------------------------------------------------
TOOL_OUTPUT_INPUT = [
    {"role": "user", "content": "run it"},
    {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
    {"type": "function_call_output", "call_id": "c1", "output": "done"},
]


def test_tool_output_nth_and_times_choose_the_reply() -> None:
    data = {
        "reply": [
            {"when": "tool_output", "text": "after the tool"},
            {"nth": 2, "status": 503},
            {"times": 1, "tool_call": {"name": "f", "arguments": "{}"}},
        ]
    }
    with serve(data) as sim:
        first = raw_post(sim.port)
        second = raw_post(sim.port)
        third = raw_post(sim.port, {"model": "m", "input": TOOL_OUTPUT_INPUT})
        fourth = raw_post(sim.port)
        assert [r.reply_index for r in sim.requests] == [2, 1, 0, None]
    assert "response.function_call_arguments.delta" in sse_types(first.body)
    assert second.status == 503
    assert "response.output_text.delta" in sse_types(third.body)
    assert fourth.status == 500
    error = fourth.json()["error"]
    assert error["code"] == "no_matching_reply" and error["type"] == "server_error"
    assert "request 4 (without tool output)" in error["message"]


def test_each_session_counts_on_its_own() -> None:
    data = {"reply": [{"nth": 1, "status": 429}, {"text": "ok"}]}
    with serve(data) as sim:
        statuses = [
            raw_post(sim.port, headers=headers).status
            for headers in (
                {"session-id": "a"},
                {"session-id": "a"},
                {"session-id": "b"},
                {},
                {},
                {"x-streamfsm-session": "a"},
            )
        ]
        assert [r.n for r in sim.requests] == [1, 2, 3, 4, 5, 6]
    assert statuses == [429, 200, 429, 429, 200, 429]


def test_repeat_starts_a_used_up_scenario_over() -> None:
    data = {"repeat": True, "reply": [{"times": 1, "status": 500}, {"times": 1, "text": "ok"}]}
    with serve(data) as sim:
        statuses = [raw_post(sim.port).status for _ in range(5)]
    assert statuses == [500, 200, 500, 200, 500]


def test_a_used_up_script_answers_script_exhausted() -> None:
    with ResponsesSimulator(Script((Reply(steps=(Chunk(b"x"),)),), name="once")) as sim:
        assert raw_post(sim.port).body == b"x"
        error = raw_post(sim.port).json()["error"]
    assert error["code"] == "script_exhausted" and "'once' is exhausted" in error["message"]


def test_a_multi_reply_shape_plays_its_replies_in_turn() -> None:
    with serve({"reply": [{"shape": "drop_then_retry"}]}) as sim:
        first, second, third = (raw_post(sim.port) for _ in range(3))
    assert not first.terminated and second.terminated and not third.terminated
    assert sse_types(second.body)[-1] == "response.completed"


# -- status, headers, bodies ---------------------------------------------------------------------------
def test_429_body_agrees_with_its_retry_after_header() -> None:
    data = {
        "reply": [
            {"nth": 1, "status": 429, "headers": {"retry-after": "7"}},
            {"nth": 2, "status": 429, "headers": {"retry-after": "7", "retry-after-ms": "250"}},
            {"nth": 3, "status": 429},
            {"nth": 4, "status": 429, "body": {"error": {"message": "mine", "code": "x"}}},
        ]
    }
    with serve(data) as sim:
        replies = [raw_post(sim.port) for _ in range(4)]
    errors = [reply.json()["error"] for reply in replies]
    assert all(reply.status == 429 for reply in replies)
    assert replies[0].headers["retry-after"] == "7"
    assert "Please try again in 7s." in errors[0]["message"]
    assert "Please try again in 250ms." in errors[1]["message"]
    assert "Please try again in 1s." in errors[2]["message"]
    assert errors[0]["code"] == "rate_limit_exceeded" and errors[0]["type"] == "requests"
    assert set(errors[0]) == {"message", "type", "param", "code"}
    assert replies[3].json() == {"error": {"message": "mine", "code": "x"}}
    assert "try again in 3s." in orjson.loads(rate_limit_body((("Retry-After", "3"),)))["error"]["message"]


def test_shape_headers_are_what_real_servers_send() -> None:
    error_429 = SHAPES["http_429"].replies[0]
    headers = dict(error_429.headers)
    body = orjson.loads(error_429.body or b"")
    assert headers["retry-after"] == "20" and "try again in 20s" in body["error"]["message"]
    assert headers["x-ratelimit-remaining-tokens"] == "600"
    with ResponsesSimulator(SHAPES["happy_text"]) as sim:
        reply = raw_post(sim.port)
    assert reply.headers["x-request-id"] == "req_sim_0001"
    assert reply.headers["x-ratelimit-limit-requests"] == "10000"
    assert reply.headers["openai-processing-ms"]


def test_reply_headers_override_the_defaults() -> None:
    data = {"reply": [{"text": "hi", "headers": {"x-request-id": "req_mine", "x-extra": "1"}}]}
    with serve(data) as sim:
        reply = raw_post(sim.port)
    assert reply.headers["x-request-id"] == "req_mine" and reply.headers["x-extra"] == "1"
    assert reply.headers["content-type"].startswith("text/event-stream")


def test_events_get_sequence_numbers_and_one_frame_each() -> None:
    events = [{"type": "response.created", "response": {"id": "r"}}, {"type": "codex.x"}]
    with serve({"reply": [{"events": events, "times": 1}, {"events": []}]}) as sim:
        first = raw_post(sim.port)
        empty = raw_post(sim.port)
    assert len(first.chunks) == 2
    assert orjson.loads(first.chunks[0].split(b"data: ")[1])["sequence_number"] == 0
    assert b"sequence_number" not in first.chunks[1]
    assert empty.status == 200 and empty.body == b"" and empty.terminated


# -- reshaping on the wire ----------------------------------------------------------------------
@pytest.mark.parametrize("cut", [0, 1, 300, 1234])
@pytest.mark.parametrize("mode", ["fin", "rst"])
def test_drop_after_bytes_counts_body_bytes_and_closes_as_asked(cut: int, mode: str) -> None:
    whole = b"".join(s.data for s in text_reply("cut me somewhere").steps if isinstance(s, Chunk))
    data = {"reply": [{"text": "cut me somewhere", "drop_after_bytes": cut, "drop": mode}]}
    with serve(data) as sim:
        reply = raw_post(sim.port)
    assert reply.body == whole[:cut]
    assert not reply.terminated
    assert reply.error == ("reset" if mode == "rst" else None)


def test_a_drop_past_the_end_sends_everything_but_the_terminator() -> None:
    data = {"reply": [{"text": "short", "drop_after_bytes": 10**6}]}
    with serve(data) as sim:
        reply = raw_post(sim.port)
    assert sse_types(reply.body)[-1] == "response.completed" and not reply.terminated


def test_rst_also_applies_to_a_shapes_own_drop() -> None:
    with serve({"reply": [{"shape": "drop_then_retry", "drop": "rst"}]}) as sim:
        reply = raw_post(sim.port)
    assert reply.error == "reset" and not reply.terminated


def test_chunk_delay_sends_one_event_per_chunk_with_pauses() -> None:
    data = {"reply": [{"shape": "crlf_split_chunks", "chunk_delay_ms": 30}]}
    with serve(data) as sim:
        reply = raw_post(sim.port)
    whole = b"".join(s.data for s in SHAPES["crlf_split_chunks"].replies[0].steps if isinstance(s, Chunk))
    assert reply.body == whole
    assert all(chunk.endswith(b"\r\n\r\n") for chunk in reply.chunks)
    assert len(reply.chunks) == len(frame_ends(whole)) > 5
    gaps = [b - a for a, b in zip(reply.arrivals, reply.arrivals[1:])]
    assert min(gaps) >= 0.025
    assert reply.elapsed >= 0.03 * (len(reply.chunks) - 1)


def test_stall_after_n_events_keeps_the_socket_silent() -> None:
    data = {"reply": [{"text": "slow answer here", "stall_s": 0.4, "stall_after": 3}]}
    with serve(data) as sim:
        reply = raw_post(sim.port)
    assert reply.terminated
    assert sse_types(b"".join(reply.chunks[:3])) == [
        "response.created", "response.in_progress", "response.output_item.added"
    ]
    assert reply.arrivals[2] < within(0.3, before=0.4) and reply.arrivals[3] >= 0.4


def test_stall_s_sets_the_length_of_a_stall_shape() -> None:
    (stalled, _good) = load_fixture("stall_then_retry").rules[0].replies
    assert Stall(STALL_SECONDS) in stalled.steps
    rule = scenario_from_data({"reply": [{"shape": "stall_then_retry", "stall_s": 12}]}).rules[0]
    assert [s for s in rule.served[0].steps if isinstance(s, Stall)] == [Stall(12.0)]
    assert rule.served[1] == rule.replies[1]


def test_stall_s_on_an_http_error_delays_the_status_line() -> None:
    with serve({"reply": [{"status": 503, "stall_s": 0.3}]}) as sim:
        reply = raw_post(sim.port)
    assert reply.status == 503 and reply.elapsed >= 0.3


def test_reshape_keeps_chunk_boundaries_it_does_not_need_to_touch() -> None:
    reply = SHAPES["crlf_split_chunks"].replies[0]
    assert reshape(reply) is reply
    stalled = reshape(reply, stall_s=1.0, stall_after=2)
    chunks = [s.data for s in stalled.steps if isinstance(s, Chunk)]
    assert b"".join(chunks) == b"".join(s.data for s in reply.steps if isinstance(s, Chunk))
    at = stalled.steps.index(Stall(1.0))
    body_before = b"".join(s.data for s in stalled.steps[:at] if isinstance(s, Chunk))
    assert len(body_before) == frame_ends(body_before)[1]
    split = frame_ends(b"".join(chunks))[1] % 7 != 0  # the stall falls inside a 7-byte chunk
    assert len(chunks) == len(reply.steps) + split
    cut = reshape(reply, drop_after_bytes=100, drop="rst")
    assert cut.drop == "rst" and cut.steps[-1] == TransportFault("drop")
    assert sum(len(s.data) for s in cut.steps if isinstance(s, Chunk)) == 100


def test_frame_ends_follow_every_line_ending() -> None:
    body = b"data: a\n\ndata: b\r\n\r\n: c\r\rdata: d\n\r\ndata: e"
    assert frame_ends(body) == [9, 20, 25, 35]


def test_rules_built_in_code() -> None:
    scenario = Scenario(
        [Rule(text_reply("first"), times=1), Rule([text_reply("a"), text_reply("b")])]
    )
    with ResponsesSimulator(scenario) as sim:
        bodies = [raw_post(sim.port).body for _ in range(4)]
    assert [b"first" in body for body in bodies] == [
        True, False, False, False
    ]
    with pytest.raises(TypeError):
        Rule([])
    with pytest.raises(ValueError):
        Rule(text_reply("x"), nth=0)
    with pytest.raises(TypeError):
        ResponsesSimulator([Rule(text_reply("x"))])  # type: ignore[arg-type]


# -- the request log ------------------------------------------------------------------------------
def test_the_log_has_one_line_per_request_with_secrets_redacted(tmp_path: Path) -> None:
    log = tmp_path / "requests.jsonl"
    scenario = load_scenario(EXAMPLES / "rate_limit_then_text.toml")
    with ResponsesSimulator(scenario, log=log) as sim:
        client = openai.OpenAI(
            base_url=sim.base_url, api_key="sk-secret-abcdefgh", max_retries=0,
            default_headers={"x-api-key": "also-secret", "x-visible": "yes"},
        )
        with pytest.raises(openai.RateLimitError):
            client.responses.create(model="m", input="hi", stream=True)
        with client.responses.create(model="m", input="hi", stream=True) as stream:
            assert [event.type for event in stream][-1] == "response.completed"
        with pytest.raises(openai.NotFoundError):
            client.models.list()
    text = log.read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    assert "sk-secret" not in text and "also-secret" not in text
    assert [(r["n"], r["method"], r["path"], r["reply"], r["status"]) for r in lines] == [
        (1, "POST", "/v1/responses", 0, 429),
        (2, "POST", "/v1/responses", 1, 200),
        (3, "GET", "/v1/models", None, 404),
    ]
    assert set(lines[0]) == {"n", "t", "method", "path", "headers", "body", "reply", "status"}
    assert lines[0]["headers"]["authorization"] == "[redacted]"
    assert lines[0]["headers"]["x-api-key"] == "[redacted]"
    assert lines[0]["headers"]["x-visible"] == "yes"
    assert lines[0]["body"] == {"model": "m", "input": "hi", "stream": True}
    assert lines[2]["body"] is None
    assert 0 <= lines[0]["t"] <= lines[1]["t"] <= lines[2]["t"] < 10


def test_the_log_is_appended_to(tmp_path: Path) -> None:
    log = tmp_path / "requests.jsonl"
    for _ in range(2):
        with serve({"reply": [{"text": "x"}]}, log=log) as sim:
            raw_post(sim.port)
    assert [json.loads(line)["n"] for line in log.read_text().splitlines()] == [1, 1]


# -- traces, with and without their timing ---------------------------------------------------------
def test_trace_replies_follow_the_recorded_attempts() -> None:
    script = script_from_trace(read_trace(FIXTURES / "drop_then_retry.jsonl"))
    first, second = script.replies
    assert first.steps[-1] == TransportFault("drop")
    assert not any(isinstance(step, Stall) for step in first.steps + second.steps)


def test_an_interrupt_is_served_as_a_stall_and_timing_can_be_recorded() -> None:
    trace = read_trace(FIXTURES / "interrupted_during_stall.jsonl")
    (plain,) = script_from_trace(trace).replies
    assert plain.steps[-1] == Stall(TRACE_STALL_S)
    (timed,) = script_from_trace(trace, timing="recorded").replies
    inputs = [r for r in trace.inputs() if r["input"] == "chunk"]
    assert [s for s in timed.steps if isinstance(s, Chunk)] == [
        s for s in plain.steps if isinstance(s, Chunk)
    ]
    first_gap = timed.steps[0]
    assert isinstance(first_gap, Stall) and first_gap.seconds == pytest.approx(inputs[0]["t"])
    assert timed.steps[-1] == Stall(TRACE_STALL_S)
    with pytest.raises(ValueError):
        script_from_trace(trace, timing="fast")  # type: ignore[arg-type]


def test_recorded_timing_reproduces_a_stall_in_the_middle(tmp_path: Path) -> None:
    header = {"format": "streamfsm-trace", "version": 1, "entry": "run_turn", "policy": {}, "request": {}}
    records = [
        {"seq": 1, "kind": "input", "attempt": 1, "t": 0.01, "input": "chunk", "data": "a"},
        {"seq": 2, "kind": "input", "attempt": 1, "t": 0.41, "input": "chunk", "data": "b"},
        {"seq": 3, "kind": "input", "attempt": 1, "t": 0.42, "input": "eof"},
        {"seq": 4, "kind": "input", "attempt": 2, "t": 5.0, "input": "http_error", "status": 429,
         "body": {"error": {"message": "slow down"}}, "headers": {"retry-after": "2"}},
        {"seq": 5, "kind": "result", "outcome": "error"},
    ]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in [header, *records]))
    first, second = script_from_trace(read_trace(path), timing="recorded").replies
    # a pause, "a", a pause, "b", the pause before the clean end of the body
    assert first.steps[:2] == (Stall(0.01), Chunk(b"a")) and first.steps[3] == Chunk(b"b")
    assert [step.seconds for step in first.steps[2::2] if isinstance(step, Stall)] == [
        pytest.approx(0.4), pytest.approx(0.01)
    ]
    assert second.status == 429 and second.headers == (("retry-after", "2"),)
    assert second.headers_after_s == 0.0
    scenario = Scenario.from_script(script_from_trace(read_trace(path), timing="recorded"))
    with ResponsesSimulator(scenario) as sim:
        reply = raw_post(sim.port)
    assert reply.chunks == [b"a", b"b"] and reply.arrivals[1] - reply.arrivals[0] >= 0.39
