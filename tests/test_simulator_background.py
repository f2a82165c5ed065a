"""Background responses in the simulator: a `background: true` stream cut after N events, resumed
with `GET /v1/responses/{id}?stream=true&starting_after=K`, cancelled with
`POST /v1/responses/{id}/cancel`. With the real openai client (sync and async) over loopback."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import httpx2
import openai
import orjson
import pytest

from engine.simulator.scenarios import Rule, Scenario, load_scenario, scenario_from_data, text_reply
from engine.simulator.shapes import RESPONSE_ID
from engine.simulator.replies import Reply, Script
from engine.simulator.server import ResponsesSimulator
from engine.simulator.background import background_response_id, start_background
from machines.records import Chunk, Stall, TransportFault

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "scenarios" / "background_resume.toml"
PARIS = "The capital of France is Paris."
FIRST_ID = background_response_id(1)


def _client(sim: ResponsesSimulator) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.base_url, api_key="sk-test-secret", max_retries=0)


def _cut_stream(client: openai.OpenAI, **options: Any) -> tuple[list[Any], BaseException | None]:
    """The events of one `background=True` streaming create, and what broke it (None: nothing)."""
    events: list[Any] = []
    try:
        for event in client.responses.create(
            model="gpt-5", input="hi", background=True, stream=True, **options
        ):
            events.append(event)
    except openai.APIConnectionError as error:
        return events, error
    return events, None


def _text(events: list[Any]) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def _get(
    sim: ResponsesSimulator, target: str, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """A plain request on the simulator: (status, headers lower-cased, body), errors included."""
    request = urllib.request.Request(f"http://127.0.0.1:{sim.port}{target}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, {k.lower(): v for k, v in reply.headers.items()}, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


# -- the first stream is cut, the resume gets the rest ---------------------------------------------
def test_the_first_stream_stops_after_n_events_and_the_resume_sends_the_rest() -> None:
    with ResponsesSimulator(load_scenario(EXAMPLE)) as sim:
        client = _client(sim)
        first, broken = _cut_stream(client)
        assert isinstance(broken, openai.APIConnectionError)
        assert isinstance(broken.__cause__, httpx2.RemoteProtocolError)  # a FIN, not a reset
        assert [(e.type, e.sequence_number) for e in first] == [
            ("response.created", 0),
            ("response.in_progress", 1),
            ("response.output_item.added", 2),
            ("response.content_part.added", 3),
        ]
        created, in_progress = first[0].response, first[1].response
        assert (created.id, created.background, created.status) == (FIRST_ID, True, "queued")
        assert (in_progress.id, in_progress.background, in_progress.status) == (
            FIRST_ID, True, "in_progress"
        )

        rest = list(client.responses.retrieve(FIRST_ID, stream=True, starting_after=3))
        numbers = [e.sequence_number for e in rest]
        assert numbers == list(range(4, 4 + len(rest))) and len(rest) > 2
        assert rest[-1].type == "response.completed"
        final = rest[-1].response
        assert (final.id, final.background, final.status) == (FIRST_ID, True, "completed")
        assert final.output_text == PARIS
        assert _text(first + rest) == PARIS  # nothing twice, nothing skipped
        assert sim.server_errors == []


def test_the_async_client_resumes_the_same_way() -> None:
    with ResponsesSimulator(load_scenario(EXAMPLE)) as sim:

        async def run() -> tuple[list[Any], list[Any]]:
            async with openai.AsyncOpenAI(
                base_url=sim.base_url, api_key="x", max_retries=0
            ) as client:
                first: list[Any] = []
                with pytest.raises(openai.APIConnectionError):
                    stream = await client.responses.create(
                        model="gpt-5", input="hi", background=True, stream=True
                    )
                    async for event in stream:
                        first.append(event)
                resumed = await client.responses.retrieve(
                    first[0].response.id, stream=True, starting_after=first[-1].sequence_number
                )
                return first, [event async for event in resumed]

        first, rest = asyncio.run(run())
    assert len(first) == 4 and rest[0].sequence_number == 4
    assert rest[-1].type == "response.completed" and _text(first + rest) == PARIS


def test_a_resume_without_starting_after_streams_from_the_first_event() -> None:
    with ResponsesSimulator(load_scenario(EXAMPLE)) as sim:
        client = _client(sim)
        first, _ = _cut_stream(client)
        whole = list(client.responses.retrieve(FIRST_ID, stream=True))
        again = list(client.responses.retrieve(FIRST_ID, stream=True, starting_after=-1))
    assert [e.sequence_number for e in whole] == list(range(len(whole)))
    assert [e.model_dump() for e in whole[: len(first)]] == [e.model_dump() for e in first]
    assert [e.model_dump() for e in again] == [e.model_dump() for e in whole]
    assert _text(whole) == PARIS


def test_the_resume_has_the_headers_and_framing_of_a_post_stream() -> None:
    with ResponsesSimulator(load_scenario(EXAMPLE)) as sim:
        client = _client(sim)
        with client.responses.with_streaming_response.create(
            model="gpt-5", input="hi", stream=True
        ) as posted:
            post_headers = dict(posted.headers)
            post_body = b"".join(posted.iter_bytes())
        first, _ = _cut_stream(client)
        response_id = first[0].response.id
        assert response_id == background_response_id(2)  # the request's number
        status, headers, body = _get(
            sim, f"/v1/responses/{response_id}?stream=true&starting_after=3"
        )
    assert status == 200
    same = ("content-type", "transfer-encoding", "cache-control", "x-ratelimit-limit-requests")
    for name in same:
        assert headers[name] == post_headers[name], name
    # The same frames as the plain stream from event 4 on, but for the stored id and background.
    frames = [frame for frame in body.split(b"\n\n") if frame]
    plain = [frame for frame in post_body.split(b"\n\n") if frame][4:]
    assert len(frames) == len(plain)
    for resumed, original in zip(frames, plain):
        assert resumed.split(b"\n")[0] == original.split(b"\n")[0]  # the event: line
        data = orjson.loads(resumed.split(b"\ndata: ", 1)[1])
        expected = orjson.loads(original.split(b"\ndata: ", 1)[1])
        if "response" in expected:
            expected["response"].update(id=response_id, background=True)
        assert data == expected


def test_n_zero_sends_no_event_and_n_beyond_the_end_sends_all_then_cuts() -> None:
    scenario = scenario_from_data({"reply": [
        {"nth": 1, "text": PARIS, "background_drop_after_events": 0},
        {"nth": 2, "text": PARIS, "background_drop_after_events": 1000},
    ]})
    with ResponsesSimulator(scenario) as sim:
        client = _client(sim)
        none, broken_at_once = _cut_stream(client)
        whole, broken_after_all = _cut_stream(client)
        second_id = background_response_id(2)
        stored = sim.background_responses
    assert none == [] and isinstance(broken_at_once, openai.APIConnectionError)
    assert whole[-1].type == "response.completed" and whole[-1].response.id == second_id
    assert isinstance(broken_after_all, openai.APIConnectionError)
    assert (stored[FIRST_ID].sent, stored[second_id].sent) == (0, len(whole))


def test_a_request_without_background_gets_the_whole_stream() -> None:
    with ResponsesSimulator(load_scenario(EXAMPLE)) as sim:
        client = _client(sim)
        events = list(client.responses.create(model="gpt-5", input="hi", stream=True))
        false_events = list(
            client.responses.create(model="gpt-5", input="hi", stream=True, background=False)
        )
        assert sim.background_responses == {}
    for stream in (events, false_events):
        assert stream[-1].type == "response.completed" and _text(stream) == PARIS
        assert stream[0].response.id == RESPONSE_ID and stream[0].response.background is False


# -- sequence numbers and what counts as an event --------------------------------------------------
def test_events_lacking_a_sequence_number_get_their_position_and_comments_are_left_out() -> None:
    frames = (
        b": keepalive\n\n",
        b'event: response.created\ndata: {"type":"response.created","response":'
        b'{"id":"resp_mine","status":"in_progress","background":false}}\n\n',
        b'data: {"type":"response.output_text.delta","sequence_number":5,"delta":"Hi"}\n\n',
        b'data: {"type":"response.output_text.delta","delta":" there"}\n\n',
        b'data: {"type":"response.completed",\n'  # one event in two data: lines, CRLF ends
        b'data: "response":{"id":"resp_mine","status":"completed"}}\r\n\r\n',
        b"data: [DONE]\n\n",
    )
    script = Script((Reply(steps=tuple(Chunk(f) for f in frames), background_drop_after_events=2),))
    with ResponsesSimulator(script) as sim:
        client = _client(sim)
        first, broken = _cut_stream(client)
        rest = list(client.responses.retrieve(FIRST_ID, stream=True, starting_after=1))
        (stored,) = sim.background_responses.values()
    assert broken is not None
    assert [(e.type, e.sequence_number) for e in first] == [
        ("response.created", 0),  # the comment before it is not an event
        ("response.output_text.delta", 5),  # its own number is kept
    ]
    # The stored events above 1, in their order: the numbered one, then the two numbered by
    # position (2 and 3); [DONE] is not an event.
    assert [(e.type, e.sequence_number) for e in rest] == [
        ("response.output_text.delta", 5),
        ("response.output_text.delta", 2),
        ("response.completed", 3),
    ]
    assert [event["sequence_number"] for event in stored.events] == [0, 5, 2, 3]
    assert stored.events[0]["response"] == {"id": FIRST_ID, "status": "queued", "background": True}
    assert stored.events[3]["response"] == {
        "id": FIRST_ID, "status": "completed", "background": True
    }


def test_events_from_a_scenario_keep_the_numbers_they_were_given() -> None:
    events = [
        {"type": "response.created", "response": {"id": "r", "status": "in_progress"}},
        {"type": "response.output_text.delta", "delta": "a", "sequence_number": 10},
        {"type": "response.output_text.delta", "delta": "b"},
        {"type": "response.completed", "response": {"id": "r", "status": "completed"}},
    ]
    scenario = scenario_from_data(
        {"reply": [{"events": events, "background_drop_after_events": 2}]}
    )
    with ResponsesSimulator(scenario) as sim:
        client = _client(sim)
        first, _ = _cut_stream(client)
        rest = list(client.responses.retrieve(FIRST_ID, stream=True, starting_after=10))
    # The scenario numbered them when it was read (0, 10, 11, 12), before any request.
    assert [e.sequence_number for e in first] == [0, 10]
    assert [(e.type, e.sequence_number) for e in rest] == [
        ("response.output_text.delta", 11), ("response.completed", 12)
    ]


def _first_stream_steps(stall_after: int) -> list[str]:
    """The kinds of steps the first stream of a background response cut after 3 events plays,
    for a text reply with a stall after ``stall_after`` events."""
    rule = Rule(
        text_reply(PARIS), stall_s=0.5, stall_after=stall_after, background_drop_after_events=3
    )
    background, first = start_background(rule.served[0], "resp_x")
    assert first.drop == "fin" and first.background_drop_after_events is None
    assert background.sent == 3 and len(background.events) > 3
    assert all(step == Stall(0.5) for step in first.steps if isinstance(step, Stall))
    assert first.steps[-1] == TransportFault("drop")
    return [type(step).__name__ for step in first.steps]


def test_the_stalls_of_the_reply_stay_in_the_first_stream_counted_in_events() -> None:
    assert _first_stream_steps(2) == ["Chunk", "Chunk", "Stall", "Chunk", "TransportFault"]
    # A stall right after the Nth event comes before the cut; one after it is not played.
    assert _first_stream_steps(3) == ["Chunk", "Chunk", "Chunk", "Stall", "TransportFault"]
    assert _first_stream_steps(4) == ["Chunk", "Chunk", "Chunk", "TransportFault"]


def test_a_stall_in_the_first_stream_is_silence_on_the_wire() -> None:
    scenario = scenario_from_data({"reply": [
        {"text": PARIS, "stall_s": 5, "stall_after": 2, "background_drop_after_events": 3}
    ]})
    with ResponsesSimulator(scenario) as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="x", max_retries=0, timeout=0.5)
        events: list[Any] = []
        with pytest.raises(openai.APITimeoutError):
            for event in client.responses.create(
                model="gpt-5", input="hi", background=True, stream=True
            ):
                events.append(event)
        rest = list(_client(sim).responses.retrieve(FIRST_ID, stream=True, starting_after=1))
    assert [e.sequence_number for e in events] == [0, 1]
    assert rest[0].sequence_number == 2 and rest[-1].type == "response.completed"


# -- retrieve and cancel ---------------------------------------------------------------------------
def test_retrieve_without_stream_answers_the_final_response() -> None:
    with ResponsesSimulator(load_scenario(EXAMPLE)) as sim:
        client = _client(sim)
        _cut_stream(client)
        response = client.responses.retrieve(FIRST_ID)
        status, headers, body = _get(sim, f"/v1/responses/{FIRST_ID}?stream=false")
    assert (response.id, response.status, response.background) == (FIRST_ID, "completed", True)
    assert response.output_text == PARIS
    assert status == 200 and headers["content-type"] == "application/json"
    assert orjson.loads(body) == response.model_dump(mode="json", exclude_unset=True)


def test_cancel_marks_the_response_cancelled_and_a_cancelled_one_cannot_be_streamed() -> None:
    with ResponsesSimulator(load_scenario(EXAMPLE)) as sim:
        client = _client(sim)
        first, _ = _cut_stream(client)
        cancelled = client.responses.cancel(FIRST_ID)
        assert (cancelled.id, cancelled.status, cancelled.background) == (
            FIRST_ID, "cancelled", True
        )
        assert cancelled.output == []  # as of the 4 events sent: no output item was done
        assert sim.background_responses[FIRST_ID].cancelled
        with pytest.raises(openai.BadRequestError) as refused:
            client.responses.retrieve(FIRST_ID, stream=True, starting_after=3)
        assert refused.value.status_code == 400
        assert refused.value.body == {
            "message": "Cannot stream a cancelled response.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
        assert client.responses.retrieve(FIRST_ID).status == "cancelled"
        again = client.responses.cancel(FIRST_ID)
        assert again.model_dump() == cancelled.model_dump()


def test_cancel_after_a_full_resume_keeps_the_output_sent() -> None:
    with ResponsesSimulator(load_scenario(EXAMPLE)) as sim:
        client = _client(sim)
        _cut_stream(client)
        list(client.responses.retrieve(FIRST_ID, stream=True, starting_after=3))
        cancelled = client.responses.cancel(FIRST_ID)
    assert cancelled.status == "cancelled" and cancelled.output_text == PARIS


def test_unknown_ids_and_bad_parameters_get_openai_shaped_errors() -> None:
    with ResponsesSimulator(load_scenario(EXAMPLE)) as sim:
        client = _client(sim)
        with pytest.raises(openai.NotFoundError) as unknown:
            client.responses.retrieve("resp_nope", stream=True, starting_after=1)
        assert unknown.value.body == {
            "message": "Response with id 'resp_nope' not found.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve("resp_nope")
        with pytest.raises(openai.NotFoundError):
            client.responses.cancel("resp_nope")
        first, _ = _cut_stream(client)
        known = first[0].response.id
        bad_stream = _get(sim, f"/v1/responses/{known}?stream=yes")
        bad_start = _get(sim, f"/v1/responses/{known}?stream=true&starting_after=three")
        post_to_retrieve = _get(sim, f"/v1/responses/{known}", method="POST")
        get_a_cancel = _get(sim, f"/v1/responses/{known}/cancel")
        elsewhere = _get(sim, f"/v1/responses/{known}/input_items")
        assert not sim.background_responses[known].cancelled
    assert bad_stream[0] == 400 and orjson.loads(bad_stream[2])["error"]["param"] == "stream"
    assert bad_start[0] == 400
    assert orjson.loads(bad_start[2])["error"] == {
        "message": "starting_after must be an integer.",
        "type": "invalid_request_error",
        "param": "starting_after",
        "code": None,
    }
    assert [post_to_retrieve[0], get_a_cancel[0], elsewhere[0]] == [405, 405, 404]
    for _, _, body in (post_to_retrieve, get_a_cancel, elsewhere):
        assert set(orjson.loads(body)["error"]) == {"message", "type", "param", "code"}


def test_without_v1_in_the_path_too() -> None:
    with ResponsesSimulator(load_scenario(EXAMPLE)) as sim:
        _cut_stream(_client(sim))
        status, _, body = _get(sim, f"/responses/{FIRST_ID}?stream=true&starting_after=3")
        cancel = _get(sim, f"/responses/{FIRST_ID}/cancel", method="POST")
    assert status == 200 and body.rstrip().endswith(b"}}")
    assert b"response.completed" in body
    assert cancel[0] == 200 and orjson.loads(cancel[2])["status"] == "cancelled"


# -- the request log, and the scenario's counts ----------------------------------------------------
def test_gets_and_cancels_are_logged_and_do_not_use_up_replies(tmp_path: Path) -> None:
    log = tmp_path / "requests.jsonl"
    scenario = scenario_from_data({"reply": [
        {"nth": 1, "text": PARIS, "background_drop_after_events": 4},
        {"times": 1, "text": "second"},
    ]})
    with ResponsesSimulator(scenario, log=log) as sim:
        client = _client(sim)
        _cut_stream(client)
        list(client.responses.retrieve(FIRST_ID, stream=True, starting_after=3))
        client.responses.retrieve(FIRST_ID)
        client.responses.cancel(FIRST_ID)
        with pytest.raises(openai.BadRequestError):
            client.responses.retrieve(FIRST_ID, stream=True)
        second = list(client.responses.create(model="gpt-5", input="hi", stream=True))
        requests = sim.requests
        assert sim.replies_used == 2
    assert _text(second) == "second"  # the GETs and the cancel were not "request 2"
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    rows = [(r["n"], r["method"], r["path"], r["reply"], r["status"]) for r in lines]
    assert rows == [
        (1, "POST", "/v1/responses", 0, 200),
        (2, "GET", f"/v1/responses/{FIRST_ID}?starting_after=3&stream=true", None, 200),
        (3, "GET", f"/v1/responses/{FIRST_ID}", None, 200),
        (4, "POST", f"/v1/responses/{FIRST_ID}/cancel", None, 200),
        (5, "GET", f"/v1/responses/{FIRST_ID}?stream=true", None, 400),
        (6, "POST", "/v1/responses", 1, 200),
    ]
    assert [(r.n, r.method, r.path, r.query, r.reply_index, r.status) for r in requests] == [
        (n, method, path.partition("?")[0], path.partition("?")[2], reply, status)
        for n, method, path, reply, status in rows
    ]
    assert all(line["headers"]["authorization"] == "[redacted]" for line in lines)
    assert "sk-test-secret" not in log.read_text()
    assert lines[0]["body"]["background"] is True


# -- the Python API --------------------------------------------------------------------------------
def test_rules_and_replies_built_in_code() -> None:
    scenario = Scenario([Rule(text_reply(PARIS), times=1, background_drop_after_events=2)])
    assert all(r.background_drop_after_events == 2 for r in scenario.rules[0].served)
    assert text_reply(PARIS).background_drop_after_events is None
    with ResponsesSimulator(scenario) as sim:
        first, _ = _cut_stream(_client(sim))
    assert len(first) == 2
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="whole number >= 0"):
            Rule(text_reply(PARIS), background_drop_after_events=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="whole number >= 0"):
            Reply(background_drop_after_events=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exclude each other"):
        Rule(text_reply(PARIS), drop_after_bytes=10, background_drop_after_events=2)


def test_only_streamed_200_replies_serve_background() -> None:
    assert Reply(background_drop_after_events=1).serves_background
    assert not Reply().serves_background
    assert not Reply(status=429, body=b"{}", background_drop_after_events=1).serves_background
    assert not Reply(status=500, background_drop_after_events=1).serves_background
    # A 429 given to a background request is sent as usual: no response is kept.
    script = Script((Reply(status=429, background_drop_after_events=1),))
    with ResponsesSimulator(script) as sim:
        with pytest.raises(openai.RateLimitError):
            _cut_stream(_client(sim))
        assert sim.background_responses == {}
